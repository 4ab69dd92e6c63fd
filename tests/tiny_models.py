"""Tiny randomly initialised transformers models and a hand-hook reference implementation."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

VOCAB = 64


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gpt2(lm: bool = False, n_layer: int = 3, n_embd: int = 32, n_head: int = 4):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return _finish((GPT2LMHeadModel if lm else GPT2Model)(cfg))


def llama(n_layer: int = 3, hidden: int = 32, heads: int = 4, kv_heads: int = 2, lm: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=48, vocab_size=VOCAB,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return _finish((LlamaForCausalLM if lm else LlamaModel)(cfg))


def gpt_neo(n_layer: int = 2, hidden: int = 32, heads: int = 4):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoConfig(
        num_layers=n_layer, hidden_size=hidden, num_heads=heads, vocab_size=VOCAB,
        max_position_embeddings=32, attention_types=[[["global", "local"], n_layer // 2]],
        window_size=8, bos_token_id=0, eos_token_id=0, embed_dropout=0.0, attention_dropout=0.0,
        resid_dropout=0.0, intermediate_size=64,
    )
    return _finish(GPTNeoForCausalLM(cfg))


def gpt_neox(n_layer: int = 2, hidden: int = 32, heads: int = 4):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=heads, vocab_size=VOCAB,
        intermediate_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
        attention_dropout=0.0, hidden_dropout=0.0,
    )
    return _finish(GPTNeoXForCausalLM(cfg))


def ids(batch: int = 1, seq: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, VOCAB, (batch, seq), generator=g)}


def main_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    return x[0]


@contextmanager
def hooked(module: nn.Module, fn: Callable, pre: bool = False):
    """A hand-written hook: ``fn(tensor) -> tensor or None`` on the module's output (or input)."""
    if pre:
        def h(mod, args, kwargs):
            t = args[0] if args else kwargs["hidden_states"]
            new = fn(t)
            if new is None:
                return None
            if args:
                return (new,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=new)
            return args, kwargs
        handle = module.register_forward_pre_hook(h, with_kwargs=True)
    else:
        def h(mod, args, out):
            t = main_tensor(out)
            new = fn(t)
            if new is None:
                return None
            if isinstance(out, torch.Tensor):
                return new
            return (new,) + tuple(out[1:])
        handle = module.register_forward_hook(h)
    try:
        yield
    finally:
        handle.remove()


def capture(model: nn.Module, module: nn.Module, inputs: dict, pre: bool = False) -> torch.Tensor:
    """Run ``model`` and return a copy of ``module``'s output (or input)."""
    store = {}

    def fn(t):
        store["t"] = t.detach().clone()

    with hooked(module, fn, pre=pre):
        model(**inputs)
    return store["t"]


def olmo2(n_layer: int = 2, hidden: int = 32, heads: int = 4):
    """Post-norm blocks: the attention and MLP read the residual stream tensor itself."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    cfg = Olmo2Config(
        num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )
    return _finish(Olmo2ForCausalLM(cfg))


def cohere(n_layer: int = 2, hidden: int = 32, heads: int = 4):
    """Parallel blocks: attention and MLP read the same normalised tensor."""
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    cfg = CohereConfig(
        num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )
    return _finish(CohereForCausalLM(cfg))


def word_tokenizer():
    """An offline word-level tokenizer over the tiny vocabulary (``"w5 w17"`` -> ``[5, 17]``), for
    wrappers that need one (nnsight's ``LanguageModel``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")
