"""Tiny random models of every transformers family in the support matrix, and for each one the
*hand-written oracle*: where each component's tensor lives, read from the family's modeling file
(``transformers/models/<family>/modeling_<family>.py``), independently of vene's introspection.

A stack oracle (``S(...)``) names, relative to one block: the self-attention module (``attn``),
its q/k/v projections (``q``/``k``/``v``) or fused projection (``fused`` + how to split it), the
output projection ``o``, where the attention sublayer's output is (``attn_out``), the MLP's input
and output and its activation module, a cross-attention (``cross``) and a state-space mixer.
``absent`` lists the components the block has no tensor for; ``xfail`` the cells known wrong
today, with the reason (they are strict xfails: the day they pass, the test says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import transformers
from packaging.version import Version

V = 64
#: the installed release; a few modeling files changed inside the supported range (see the uses)
TF = Version(transformers.__version__)
TOK = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)
DEC = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
           max_position_embeddings=64, **TOK)
GQA = dict(DEC, num_key_value_heads=2)
SEQ = 7



@dataclass
class S:
    """Oracle for one stack."""

    path: str
    H: int = 4
    KV: int = 4
    d: int = 8
    attn: str | None = "self_attn"
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    fused: tuple | None = None  # (path, layout) layout: "concat" | "interleaved" | "grouped"
    o: str | None = "self_attn.o_proj"
    attn_out: tuple | None = ("self_attn", "output")
    mlp_in: tuple | None = ("mlp", "input")
    mlp_out: tuple | None = ("mlp", "output")
    act: str | None = "mlp.act_fn"
    cross: dict | None = None
    mixer: str | None = None
    causal: bool = True
    probs: str = "interface"  # how attention_weight is checked: "interface" | "module:<child>" | "none"
    absent: dict = field(default_factory=dict)  # component -> substring of vene's reason
    not_run: str = ""  # components starting with this exist but this model's forward never runs them
    xfail: dict = field(default_factory=dict)  # component -> reason


@dataclass
class Family:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], dict]
    stacks: dict  # "" (default stack) or the prefix -> S
    note: str = ""
    output: Callable | None = None  # the model output compared (default: main_output)


def _mk(cls_name: str, **kw: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import transformers as T

        cls = getattr(T, cls_name)
        torch.manual_seed(0)
        cfg = cls.config_class(**kw)
        m = cls(cfg).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    return build


def ids(seed: int, batch: int = 2, seq: int = SEQ) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, V - 2, (batch, seq), generator=g)}


def s2s(seed: int) -> dict:
    x = ids(seed)
    x["decoder_input_ids"] = ids(seed + 100, seq=5)["input_ids"]
    return x


def pixels(seed: int, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, size, size, generator=g)}


def whisper_in(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_features": torch.randn(2, 8, 32, generator=g),
            "decoder_input_ids": ids(seed + 100, seq=5)["input_ids"]}


def llava_in(seed: int) -> dict:
    x = ids(seed, seq=8)
    x["input_ids"][:, 2:6] = V - 1  # four image tokens: one per patch of a 16x16 image, patch 8
    x.update(pixels(seed))
    return x


def blip_in(seed: int) -> dict:
    x = ids(seed)
    x.update(pixels(seed, 16))
    return x


LLAMA = S("model.layers", KV=2)
ABSENT_MIXER = {c: "state-space" for c in ("attention_input", "attention_output", "attention_weight",
                                               "mlp_input", "mlp_output", "mlp_activation")}
MOE_ACT = {"mlp_activation": "routed tokens"}


def llama_like(path: str = "model.layers", KV: int = 2, d: int = 8, act: str = "mlp.act_fn", **kw: Any) -> S:
    return S(path, KV=KV, d=d, act=act, **kw)


def gpt_style(path: str, attn: str, q: str, k: str, v: str, o: str, mlp_act: str, **kw: Any) -> S:
    return S(path, attn=attn, q=f"{attn}.{q}", k=f"{attn}.{k}", v=f"{attn}.{v}", o=f"{attn}.{o}",
             attn_out=(attn, "output"), act=mlp_act, **kw)


def fused(path: str, attn: str, qkv: str, layout: str, o: str, act: str, H: int = 4, KV: int = 4, **kw: Any) -> S:
    return S(path, H=H, KV=KV, attn=attn, q=None, k=None, v=None, fused=(f"{attn}.{qkv}", layout),
             o=f"{attn}.{o}", attn_out=(attn, "output"), act=act, **kw)


def bart_like(path: str, causal: bool, cross: bool, xf: dict | None = None, absent: dict | None = None) -> S:
    return S(path, o="self_attn.out_proj", mlp_in=("fc1", "input"), mlp_out=("fc2", "output"), act="activation_fn",
             causal=causal, xfail=xf or {}, absent=absent or {},
             cross=dict(attn="encoder_attn", q="encoder_attn.q_proj", k="encoder_attn.k_proj", v="encoder_attn.v_proj",
                        o="encoder_attn.out_proj", out=("encoder_attn", "output")) if cross else None)


def bert_like(path: str, act: str = "intermediate.intermediate_act_fn", causal: bool = False, **kw: Any) -> S:
    return S(path, attn="attention.self", q="attention.self.query", k="attention.self.key", v="attention.self.value",
             o="attention.output.dense", attn_out=("attention.output.dense", "output"),
             mlp_in=("intermediate", "input"), mlp_out=("output.dense", "output"), act=act, causal=causal, **kw)




def _families() -> list[Family]:
    F = []

    def add(name, build, inputs, stacks, note=""):
        F.append(Family(name, build, inputs, stacks, note))

    add("gpt2", _mk("GPT2LMHeadModel", n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, **TOK), ids,
        {"": fused("transformer.h", "attn", "c_attn", "concat", "c_proj", "mlp.act")})
    add("gpt_neo", _mk("GPTNeoForCausalLM", num_layers=2, hidden_size=32, num_heads=4, vocab_size=V, max_position_embeddings=64,
                       attention_types=[[["global", "local"], 1]], window_size=8, intermediate_size=48, **TOK), ids,
        {"": S("transformer.h", attn="attn", q="attn.attention.q_proj", k="attn.attention.k_proj",
               v="attn.attention.v_proj", o="attn.attention.out_proj", attn_out=("attn", "output"), act="mlp.act",
               probs="module:attn.attention.attn_dropout")})
    add("gpt_neox", _mk("GPTNeoXForCausalLM", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=V,
                        intermediate_size=48, max_position_embeddings=64, **TOK), ids,
        {"": fused("gpt_neox.layers", "attention", "query_key_value", "interleaved", "dense", "mlp.act")},
        note="parallel residual with two norms")
    add("gptj", _mk("GPTJForCausalLM", n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, rotary_dim=4, **TOK), ids,
        {"": gpt_style("transformer.h", "attn", "q_proj", "k_proj", "v_proj", "out_proj", "mlp.act")})
    add("codegen", _mk("CodeGenForCausalLM", n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, rotary_dim=4, **TOK), ids,
        {"": S("transformer.h", attn="attn", q=None, k=None, v=None, o="attn.out_proj", attn_out=("attn", "output"),
               act="mlp.act",
               absent={c: "not known" for c in ("query_output", "key_output", "value_output", "head_query_output",
                                                "head_key_output", "head_value_output")})},
        note="CodeGen's qkv_proj interleaves q, v, k over 4 model-parallel partitions")
    add("opt", _mk("OPTForCausalLM", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=48, vocab_size=V,
                   max_position_embeddings=64, word_embed_proj_dim=32, **TOK), ids,
        {"": bart_like("model.decoder.layers", True, False, absent={c: "flattens" for c in ("mlp_input", "mlp_output", "mlp_activation")})})
    add("bloom", _mk("BloomForCausalLM", n_layer=2, hidden_size=32, n_head=4, vocab_size=V, **TOK), ids,
        {"": fused("transformer.h", "self_attention", "query_key_value", "interleaved", "dense", "mlp.gelu_impl",
                   probs="module:self_attention.attention_dropout")})
    # before 5.25 FalconAttention without alibi computed softmax(qk) inline (or called SDPA): the
    # dropout module vene finds receives the probabilities only on the alibi path, so a call says
    # that it never ran
    falcon_probs = {"not_run": "attention_weight"} if TF < Version("5.25") else {}
    add("falcon", _mk("FalconForCausalLM", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=V, **TOK), ids,
        {"": fused("transformer.h", "self_attention", "query_key_value", "concat", "dense", "mlp.act", KV=1, **falcon_probs)},
        note="multi-query (the default)")
    add("falcon_mha", _mk("FalconForCausalLM", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=V,
                          multi_query=False, **TOK), ids,
        {"": fused("transformer.h", "self_attention", "query_key_value", "interleaved", "dense", "mlp.act", **falcon_probs)})
    add("falcon_new", _mk("FalconForCausalLM", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=V,
                          new_decoder_architecture=True, num_kv_heads=2, **TOK), ids,
        {"": fused("transformer.h", "self_attention", "query_key_value", "grouped", "dense", "mlp.act", KV=2,
                   absent={"head_query_output": "strided axis"}, **falcon_probs)},
        note="new_decoder_architecture, 2 kv groups")
    add("gpt_bigcode", _mk("GPTBigCodeForCausalLM", n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, **TOK), ids,
        {"": fused("transformer.h", "attn", "c_attn", "concat", "c_proj", "mlp.act", KV=1)}, note="multi-query")
    add("gpt_bigcode_mha", _mk("GPTBigCodeForCausalLM", n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64,
                               multi_query=False, **TOK), ids,
        {"": fused("transformer.h", "attn", "c_attn", "interleaved", "c_proj", "mlp.act")})
    add("phi", _mk("PhiForCausalLM", **DEC), ids,
        {"": S("model.layers", o="self_attn.dense", act="mlp.activation_fn")})
    add("phi3", _mk("Phi3ForCausalLM", **GQA), ids,
        {"": S("model.layers", KV=2, q=None, k=None, v=None, fused=("self_attn.qkv_proj", "concat"), act="mlp.activation_fn")})
    for name, cls, extra in [
        ("llama", "LlamaForCausalLM", {}), ("mistral", "MistralForCausalLM", {}), ("qwen2", "Qwen2ForCausalLM", {}),
        ("qwen3", "Qwen3ForCausalLM", {"head_dim": 8}), ("gemma", "GemmaForCausalLM", {"head_dim": 8}),
        ("gemma2", "Gemma2ForCausalLM", {"head_dim": 8}), ("gemma3_text", "Gemma3ForCausalLM", {"head_dim": 8}),
        ("olmo", "OlmoForCausalLM", {}), ("granite", "GraniteForCausalLM", {}), ("stablelm", "StableLmForCausalLM", {}),
        ("helium", "HeliumForCausalLM", {"head_dim": 8}), ("smollm3", "SmolLM3ForCausalLM", {}),
    ]:
        add(name, _mk(cls, **GQA, **extra), ids, {"": llama_like()})
    add("olmo2", _mk("Olmo2ForCausalLM", **GQA), ids, {"": llama_like()}, note="post-norm")
    add("cohere", _mk("CohereForCausalLM", **GQA), ids, {"": llama_like()}, note="parallel block")
    add("starcoder2", _mk("Starcoder2ForCausalLM", **GQA), ids, {"": llama_like(act="mlp.act")})
    add("glm", _mk("GlmForCausalLM", **GQA, head_dim=8), ids, {"": llama_like(act="mlp.activation_fn")})
    add("persimmon", _mk("PersimmonForCausalLM", **DEC), ids,
        {"": S("model.layers", q=None, k=None, v=None, fused=("self_attn.query_key_value", "interleaved"),
               o="self_attn.dense", act="mlp.act")})
    add("mixtral", _mk("MixtralForCausalLM", **GQA, num_local_experts=4, num_experts_per_tok=2), ids,
        {"": llama_like(act=None, absent=MOE_ACT)})
    add("qwen2_moe", _mk("Qwen2MoeForCausalLM", **GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                         shared_expert_intermediate_size=16), ids, {"": llama_like(act=None, absent=MOE_ACT)})
    add("biogpt", _mk("BioGptForCausalLM", **DEC), ids, {"": bart_like("biogpt.layers", True, False)})
    add("xglm", _mk("XGLMForCausalLM", vocab_size=V, d_model=32, num_layers=2, attention_heads=4, ffn_dim=48,
                    max_position_embeddings=64, **TOK), ids,
        {"": S("model.layers", o="self_attn.out_proj", mlp_in=("fc1", "input"), mlp_out=("fc2", "output"),
               act="activation_fn", absent={"attention_weight": "inline"})})
    add("mamba", _mk("MambaForCausalLM", vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2,
                     conv_kernel=4, **TOK), ids,
        {"": S("backbone.layers", attn=None, q=None, k=None, v=None, o=None, attn_out=None, mlp_in=None, mlp_out=None,
               act=None, mixer="mixer", absent=ABSENT_MIXER)})
    add("mamba2", _mk("Mamba2ForCausalLM", vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2,
                      num_heads=8, head_dim=8, n_groups=1, conv_kernel=4, chunk_size=8, **TOK), ids,
        {"": S("backbone.layers", attn=None, q=None, k=None, v=None, o=None, attn_out=None, mlp_in=None, mlp_out=None,
               act=None, mixer="mixer", absent=ABSENT_MIXER)})
    enc = dict(DEC)
    add("bert", _mk("BertModel", **enc), ids, {"": bert_like("encoder.layer")}, note="post-norm")
    add("roberta", _mk("RobertaModel", **dict(enc, pad_token_id=1)), ids,
        {"": bert_like("encoder.layer")}, note="post-norm")
    add("electra", _mk("ElectraModel", **enc, embedding_size=32), ids,
        {"": bert_like("encoder.layer")}, note="post-norm")
    add("esm", _mk("EsmForMaskedLM", **dict(enc, pad_token_id=1, mask_token_id=2)), ids,
        {"": bert_like("esm.encoder.layer", act="intermediate")}, note="pre-norm BERT layout")
    add("distilbert", _mk("DistilBertModel", vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                          max_position_embeddings=64, pad_token_id=0), ids,
        {"": S("transformer.layer", attn="attention", q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
               o="attention.out_lin", attn_out=("attention", "output"), mlp_in=("ffn", "input"), mlp_out=("ffn", "output"),
               act="ffn.activation", causal=False)}, note="post-norm")
    add("vit", _mk("ViTModel", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                   image_size=16, patch_size=8), pixels,
        {"": S("layers", attn="attention", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
               o="attention.o_proj", attn_out=("attention", "output"), act="mlp.activation_fn", causal=False)})
    t5_self = dict(attn="layer.0.SelfAttention", q="layer.0.SelfAttention.q", k="layer.0.SelfAttention.k",
                   v="layer.0.SelfAttention.v", o="layer.0.SelfAttention.o", attn_out=("layer.0.SelfAttention", "output"),
                   mlp_in=("layer.1.DenseReluDense", "input"), mlp_out=("layer.1.DenseReluDense", "output"),
                   act="layer.1.DenseReluDense.act")
    t5_dec = dict(t5_self, mlp_in=("layer.2.DenseReluDense", "input"), mlp_out=("layer.2.DenseReluDense", "output"),
                  act="layer.2.DenseReluDense.act",
                  cross=dict(attn="layer.1.EncDecAttention", q="layer.1.EncDecAttention.q", k="layer.1.EncDecAttention.k",
                             v="layer.1.EncDecAttention.v", o="layer.1.EncDecAttention.o",
                             out=("layer.1.EncDecAttention", "output")))
    add("t5", _mk("T5ForConditionalGeneration", vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                  decoder_start_token_id=0, **TOK), s2s,
        {"": S("encoder.block", causal=False, **t5_self), "decoder": S("decoder.block", causal=True, **t5_dec)})
    bart_kw = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64, **TOK)
    add("bart", _mk("BartForConditionalGeneration", **bart_kw), s2s,
        {"": bart_like("model.encoder.layers", False, False),
         "decoder": bart_like("model.decoder.layers", True, True)},
        note="post-norm")
    add("mbart", _mk("MBartForConditionalGeneration", **bart_kw), s2s,
        {"": bart_like("model.encoder.layers", False, False), "decoder": bart_like("model.decoder.layers", True, True)})
    add("whisper", _mk("WhisperForConditionalGeneration", vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                       num_mel_bins=8, max_source_positions=16, max_target_positions=32, decoder_start_token_id=0,
                       **TOK), whisper_in,
        {"": bart_like("model.encoder.layers", False, False), "decoder": bart_like("model.decoder.layers", True, True)})
    return F


FAMILIES = {f.name: f for f in _families()}


def _multimodal() -> None:
    def llava_build() -> torch.nn.Module:
        import transformers as T

        torch.manual_seed(0)
        vc = T.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                image_size=16, patch_size=8, projection_dim=32)
        tc = T.LlamaConfig(**GQA)
        cfg = T.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=V - 1, vision_feature_layer=-1,
                            image_seq_length=4)
        m = T.LlavaForConditionalGeneration(cfg).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    clip = S("model.vision_tower.encoder.layers", attn="self_attn", o="self_attn.out_proj", act="mlp.activation_fn",
             causal=False)
    FAMILIES["llava"] = Family("llava", llava_build, llava_in,
                               {"": llama_like("model.language_model.layers"), "vision": clip},
                               note="LlavaForConditionalGeneration: Llama text model, CLIP vision tower")

    def gemma3_build() -> torch.nn.Module:
        import transformers as T

        torch.manual_seed(0)
        vc = T.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=16, patch_size=8)
        tc = T.Gemma3TextConfig(**GQA, head_dim=8)
        cfg = T.Gemma3Config(vision_config=vc, text_config=tc, mm_tokens_per_image=4, image_token_index=V - 1,
                             boi_token_index=V - 2, eoi_token_index=V - 3)
        m = T.Gemma3ForConditionalGeneration(cfg).eval()
        with torch.no_grad():  # initialised to zeros: the image would not reach the text model
            m.model.multi_modal_projector.mm_input_projection_weight.normal_()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    siglip = S("model.vision_tower.encoder.layers", o="self_attn.out_proj", act="mlp.activation_fn", causal=False)
    FAMILIES["gemma3"] = Family("gemma3", gemma3_build, llava_in,
                                {"": llama_like("model.language_model.layers"), "vision": siglip},
                                note="Gemma3ForConditionalGeneration: Gemma-3 text model, SigLIP vision tower")

    def blip_build() -> torch.nn.Module:
        import transformers as T

        torch.manual_seed(0)
        tc = T.BlipTextConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, encoder_hidden_size=32, **TOK)
        vc = T.BlipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                image_size=16, patch_size=8, initializer_range=0.02)  # default 1e-10: all ~0
        cfg = T.BlipConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=32)
        m = T.BlipModel(cfg).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    blip_vis = S("vision_model.encoder.layers", attn="self_attn", q=None, k=None, v=None,
                 fused=("self_attn.qkv", "concat"), o="self_attn.projection", act="mlp.activation_fn", causal=False)
    FAMILIES["blip"] = Family("blip", blip_build, blip_in,
                              {"": bert_like("text_model.encoder.layer", not_run="cross_",
                                             cross=dict(attn="crossattention.self", q="crossattention.self.query",
                                                        k="crossattention.self.key", v="crossattention.self.value",
                                                        o="crossattention.output.dense",
                                                        out=("crossattention.output.dense", "output"))),
                               "vision": blip_vis},
                              note="BlipModel: BERT-style text encoder, ViT-style vision encoder",
                              output=lambda out: torch.cat([out.text_model_output.last_hidden_state.flatten(1),
                                                            out.vision_model_output.last_hidden_state.flatten(1)], 1))


_multimodal()


def main_output(out: Any) -> torch.Tensor:
    for k in ("logits", "last_hidden_state", "logits_per_image", "prediction_logits"):
        v = getattr(out, k, None)
        if isinstance(v, torch.Tensor):
            return v
    raise AssertionError(f"no main output in {type(out).__name__}")
