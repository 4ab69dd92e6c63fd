"""Layer stepping finds its way in by signatures and objects, not by argument names; a sweep that
cannot use the fast path warns with the reason and records the mode it ran in."""
from __future__ import annotations

import warnings
from typing import Optional

import pytest
import torch

import tiny_models
from vene.analysis import SweepFallbackWarning, causal_trace
from vene.analysis import stepping
from vene.analysis.stepping import find_cache_parameter


class Cache:  # stands in for transformers.cache_utils.Cache (only the name of the type matters)
    def update(self, key, value, layer_idx=None):
        return key, value

    def get_seq_length(self):
        return 0


class StaticCache(Cache):
    pass


def test_cache_parameter_found_by_annotation_whatever_its_name():
    def renamed(hidden_states, attention_mask=None, memory: Optional[Cache] = None, use_cache=False): ...
    def union(hidden_states, kv_state: "Cache | None" = None, cache_position=None): ...
    def subclass(hidden_states, store: StaticCache | None = None): ...

    assert find_cache_parameter(renamed) == "memory"
    assert find_cache_parameter(union) == "kv_state"
    assert find_cache_parameter(subclass) == "store"


def test_cache_parameter_found_by_the_object_handed():
    def fn(hidden_states, thing=None, **kwargs): ...

    assert find_cache_parameter(fn, (torch.zeros(1), Cache())) == "thing"
    assert find_cache_parameter(fn, (torch.zeros(1),), {"other_name": Cache()}) == "other_name"


def test_cache_parameter_names_are_the_last_resort_and_flags_are_never_caches():
    def old(hidden_states, layer_past=None, use_cache=False): ...
    def newer(hidden_states, past_key_values=None): ...
    def v524(hidden_states, cache=None, cache_position=None): ...
    def none(hidden_states, use_cache=False, cache_position=None): ...

    assert find_cache_parameter(old) == "layer_past"
    assert find_cache_parameter(newer) == "past_key_values"
    assert find_cache_parameter(v524) == "cache"
    assert find_cache_parameter(none) is None


def test_a_parameter_annotated_as_something_else_is_never_the_cache():
    # transformers 4.x GPT-2: layer_past is a legacy tuple of tensors, not a Cache
    def legacy(hidden_states, layer_past: Optional[tuple[torch.Tensor]] = None, use_cache: bool = False): ...

    assert find_cache_parameter(legacy) is None


def test_installed_transformers_layers_are_found():
    model = tiny_models.llama(lm=True)
    layer = model.model.layers[0]
    assert find_cache_parameter(layer.forward) is not None


def _trace(model, **kw):
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    d = model.get_input_embeddings().weight.shape[1]
    noise = torch.randn(2, 2, d, generator=torch.Generator().manual_seed(1)) * 0.5
    return causal_trace(model, None, ids, 7, subject=[1, 2], components=("block_output",), window=1,
                        noise=noise, progress=False, **kw)


@pytest.fixture(scope="module")
def llama_lm():
    return tiny_models.llama(lm=True).eval()


def test_fast_path_is_used_without_a_warning(llama_lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SweepFallbackWarning)
        res = _trace(llama_lm)
    assert res.extra["strategy"] == "step+prefix" and res.extra["fallback_reason"] is None


def test_undetectable_cache_argument_warns_and_records_step_mode(llama_lm, monkeypatch):
    fast = _trace(llama_lm)
    monkeypatch.setattr(stepping, "find_cache_parameter", lambda *a, **k: None)
    with pytest.warns(SweepFallbackWarning, match=r"key/value cache argument.*mode 'step'"):
        res = _trace(llama_lm)
    assert res.extra["strategy"] == "step"
    assert "cache argument" in res.extra["fallback_reason"]
    torch.testing.assert_close(res.scores["block_output"], fast.scores["block_output"], rtol=1e-4, atol=1e-5)


def test_something_between_layers_warns_and_records_forward_mode(llama_lm):
    # a user's hook that changes layer 1's input: replaying layer by layer would skip it
    handle = llama_lm.model.layers[1].register_forward_pre_hook(lambda m, args: (args[0] * 1.5,) + args[1:])
    try:
        with pytest.warns(SweepFallbackWarning, match=r"does not receive layer 0's output.*mode 'forward'"):
            res = _trace(llama_lm)
    finally:
        handle.remove()
    assert res.extra["strategy"] == "forward"


def test_asking_for_plain_steps_is_not_a_fallback(llama_lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SweepFallbackWarning)
        res = _trace(llama_lm, strategy="step")
    assert res.extra["strategy"] == "step" and res.extra["fallback_reason"] is None
