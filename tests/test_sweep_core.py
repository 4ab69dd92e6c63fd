"""Sweeps on the core: module-path templates, patch functions (clean / mean / resample / zero),
and a layer in the middle of the model that cannot be cut to a suffix -- each against a
per-cell loop of hand-written hooks."""
from __future__ import annotations

import pytest
import torch

import tiny_models
from tiny_models import capture, hooked

from vene.analysis import SweepFallbackWarning, activation_patching, causal_trace, logit_diff
from vene.errors import ConfigError

ATOL = 1e-5
METRIC = logit_diff(3, 9)


@pytest.fixture(scope="module")
def llama_lm():
    return tiny_models.llama(n_layer=4)


def _inputs():
    clean = tiny_models.ids(batch=2, seq=5, seed=5)["input_ids"]
    corr = tiny_models.ids(batch=2, seq=5, seed=6)["input_ids"]
    return clean, corr


def per_cell_loop(model, clean, corr, module_of, value_of, positions=range(5)):
    """One hooked forward pass per (layer, position): ``value_of(clean_act, corr_act, p)`` is
    written at position ``p`` of ``module_of(layer)``'s output."""
    n = len(model.model.layers)
    grid = torch.empty(n, len(positions))
    with torch.no_grad():
        for l in range(n):
            act = capture(model, module_of(l), {"input_ids": clean})
            base = capture(model, module_of(l), {"input_ids": corr})
            for j, p in enumerate(positions):
                def fn(t, p=p, act=act, base=base):
                    t = t.clone()
                    t[:, p] = value_of(act, base, p)
                    return t
                with hooked(module_of(l), fn):
                    grid[l, j] = METRIC(model(input_ids=corr).logits[:, -1]).mean()
    return grid


@pytest.mark.parametrize("strategy", ["auto", "forward"])
def test_templated_module_path_sweep_equals_per_cell_loop(llama_lm, strategy):
    clean, corr = _inputs()
    res = activation_patching(llama_lm, clean, corr, METRIC, components=("model.layers[{}].mlp.output",),
                              progress=False, strategy=strategy)
    layers = llama_lm.model.layers
    want = per_cell_loop(llama_lm, clean, corr, lambda l: layers[l].mlp, lambda a, b, p: a[:, p])
    torch.testing.assert_close(res.scores["model.layers[{}].mlp.output"], want, atol=ATOL, rtol=0)
    # the same grid as the named component
    named = activation_patching(llama_lm, clean, corr, METRIC, components=("mlp_output",), progress=False, strategy=strategy)
    torch.testing.assert_close(res.scores["model.layers[{}].mlp.output"], named.scores["mlp_output"], atol=ATOL, rtol=0)


def test_module_path_without_the_layer_is_refused(llama_lm):
    clean, corr = _inputs()
    with pytest.raises(ConfigError, match=r"model\.layers\[\{\}\]\.mlp\.output"):
        activation_patching(llama_lm, clean, corr, METRIC, components=("model.layers[0].mlp.output",), progress=False)
    with pytest.raises(ConfigError, match="template"):
        causal_trace(llama_lm, None, clean[:1], 3, subject=[1], components=("model.layers[0].mlp.output",), progress=False)


@pytest.mark.parametrize("patch, value_of", [
    ("zero", lambda a, b, p: 0),
    ("mean", lambda a, b, p: a[:, p].mean(0, keepdim=True)),
    ("resample", lambda a, b, p: a[[1, 0], p]),  # two clean rows: row i takes row (i + 1) % 2
])
@pytest.mark.parametrize("strategy", ["auto", "forward"])
def test_patch_functions_equal_per_cell_loop(llama_lm, patch, value_of, strategy):
    clean, corr = _inputs()
    res = activation_patching(llama_lm, clean, corr, METRIC, components=("block_output",), patch=patch,
                              progress=False, strategy=strategy)
    layers = llama_lm.model.layers
    want = per_cell_loop(llama_lm, clean, corr, lambda l: layers[l], value_of)
    torch.testing.assert_close(res.scores["block_output"], want, atol=ATOL, rtol=0)


def test_custom_patch_function_and_bad_ones(llama_lm):
    clean, corr = _inputs()
    res = activation_patching(llama_lm, clean, corr, METRIC, layers=[2], patch=lambda rec, S: 2 * rec, progress=False)
    layer = llama_lm.model.layers[2]
    act = capture(llama_lm, layer, {"input_ids": clean})

    def fn(t):
        t = t.clone()
        t[:, 3] = 2 * act[:, 3]
        return t

    with torch.no_grad(), hooked(layer, fn):
        want = float(METRIC(llama_lm(input_ids=corr).logits[:, -1]).mean())
    assert float(res.scores["block_output"][0, 3]) == pytest.approx(want, abs=ATOL)
    with pytest.raises(ConfigError, match="Unknown patch"):
        activation_patching(llama_lm, clean, corr, METRIC, patch="meen", progress=False)
    with pytest.raises(ConfigError, match="rows"):
        activation_patching(llama_lm, clean, corr, METRIC, patch=lambda rec, S: rec[:, :2], progress=False)
    with pytest.raises(ConfigError, match="several"):
        activation_patching(llama_lm, clean[:1], corr, METRIC, patch="resample", progress=False)


def test_a_middle_layer_that_cannot_be_cut_to_a_suffix(llama_lm):
    """Layer 1 attends with a mask that is not (seq, seq) (so it is not causal either): the sweep
    may not reuse prefixes; it says so and gives the per-cell loop's numbers, without an
    uncaught internal exception."""
    clean, corr = _inputs()
    layer = llama_lm.model.layers[1]

    def full_attention(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        return args, dict(kwargs, attention_mask=torch.ones(h.shape[0], 1, 1, h.shape[1], dtype=torch.bool))

    handle = layer.register_forward_pre_hook(full_attention, with_kwargs=True)
    try:
        with pytest.warns(SweepFallbackWarning, match="layer 1"):
            res = activation_patching(llama_lm, clean, corr, METRIC, components=("block_output",), progress=False)
        assert res.extra["strategy"] == "step"
        layers = llama_lm.model.layers
        want = per_cell_loop(llama_lm, clean, corr, lambda l: layers[l], lambda a, b, p: a[:, p])
        torch.testing.assert_close(res.scores["block_output"], want, atol=ATOL, rtol=0)
    finally:
        handle.remove()


def test_runner_mode_before_recording_is_the_planned_one(llama_lm):
    # SweepRunner.mode read before the recording pass used to raise AttributeError (no stepper yet)
    from vene.analysis.sweep import SweepRunner

    clean, corr = _inputs()
    sites = [("block_output", l) for l in range(4)]
    runner = SweepRunner(llama_lm, {"input_ids": clean[:1]}, {"input_ids": corr[:1]}, sites, progress=False)
    assert runner.mode == "step"
    forward = SweepRunner(llama_lm, {"input_ids": clean[:1]}, {"input_ids": corr[:1]}, sites, progress=False,
                          strategy="forward")
    assert forward.mode == "forward"
    runner.record()
    assert runner.mode == "step+prefix"
