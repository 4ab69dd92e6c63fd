"""run_with_cache, attribution patching, logit lens and DLA against hand-computed oracles."""
from __future__ import annotations

import json

import pytest
import torch

import vene as pv
import tiny_models as tm
from vene.analysis import (
    Grid, GridSet, activation_patching, attribution_patching, cache_to_disk, compare_with_patching,
    direct_logit_attribution, load_cache, load_result, logit_diff, logit_lens, rank_correlation, run_with_cache,
)


@pytest.fixture(scope="module")
def llama():
    return tm.llama(n_layer=3)


@pytest.fixture(scope="module")
def gpt2():
    return tm.gpt2(lm=True)


# ---------------------------------------------------------------- cache


def test_cache_equals_per_site_hooks(llama):
    x = tm.ids(2, 6)
    cache = run_with_cache(llama, x, ["block_output", "mlp_output", "head_attention_value_output", "block_input"])
    for l, layer in enumerate(llama.model.layers):
        torch.testing.assert_close(cache["block_output", l], tm.capture(llama, layer, x))
        torch.testing.assert_close(cache["mlp_output", l], tm.capture(llama, layer.mlp, x))
        torch.testing.assert_close(cache["block_input", l], tm.capture(llama, layer, x, pre=True))
        z = tm.capture(llama, layer.self_attn.o_proj, x, pre=True)  # (b, s, H*dh)
        torch.testing.assert_close(cache["head_attention_value_output", l], z.view(2, 6, 4, 8).transpose(1, 2))
    torch.testing.assert_close(cache["block_output", -1], cache["block_output.2"])
    assert cache.stack("block_output").shape == (3, 2, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(cache.output.logits, llama(**x).logits)


def test_cache_positions_dtype_filter_and_no_aliasing(llama):
    x = tm.ids(2, 6)
    cache = run_with_cache(llama, x, ["block_output", "head_query_output"], names_filter=r"\.(0|2)$",
                           positions=[1, -1], dtype=torch.float16, device="cpu")
    assert sorted(cache) == [("block_output", 0), ("block_output", 2), ("head_query_output", 0), ("head_query_output", 2)]
    full = tm.capture(llama, llama.model.layers[2], x)
    assert cache["block_output", 2].dtype == torch.float16
    torch.testing.assert_close(cache["block_output", 2].float(), full[:, [1, 5]], atol=1e-2, rtol=1e-2)
    assert cache["head_query_output", 0].shape == (2, 4, 2, 8)
    with pytest.raises(KeyError, match="not cached"):
        cache["block_output", 1]
    with pytest.raises(pv.ConfigError, match="Nothing to cache"):
        run_with_cache(llama, x, ["block_output"], names_filter=["nope"])
    # an unfiltered cache never aliases the module's tensor
    c = run_with_cache(llama, x, ["block_output"], layers=[0])
    c["block_output", 0].zero_()
    assert tm.capture(llama, llama.model.layers[0], x).abs().sum() > 0
    assert not llama.model.layers[0]._forward_hooks and not llama.model.layers[0]._forward_pre_hooks


def test_cache_gradients_equal_autograd_by_hand(llama):
    x = tm.ids(2, 6)
    cache = run_with_cache(llama, x, ["block_output", "head_attention_value_output"], positions=[2, 5],
                           grad_of=lambda lg: lg[:, -1, 7] - lg[:, -1, 9])
    # by hand: make layer 1's output a leaf, finish the forward, differentiate
    store = {}

    def keep(t):
        t = t.detach().requires_grad_(True)
        store["t"] = t
        return t

    with tm.hooked(llama.model.layers[1], keep), torch.enable_grad():
        lg = llama(**x).logits
        (lg[:, -1, 7] - lg[:, -1, 9]).sum().backward()
    torch.testing.assert_close(cache.grads["block_output", 1], store["t"].grad[:, [2, 5]])
    assert all(p.grad is None for p in llama.parameters())
    assert cache.grads["head_attention_value_output", 0].shape == cache["head_attention_value_output", 0].shape


def test_cache_to_disk_shards_and_save(tmp_path, llama):
    batches = [tm.ids(2, 6, seed=s) for s in (1, 2, 3)]
    disk = cache_to_disk(llama, batches, tmp_path / "c", components=["mlp_output"], progress=False)
    whole = run_with_cache(llama, {"input_ids": torch.cat([b["input_ids"] for b in batches])}, ["mlp_output"])
    assert len(disk.files) == 3 and len(disk) == 3
    torch.testing.assert_close(disk["mlp_output", 1], whole["mlp_output", 1])
    whole.save(tmp_path / "one.safetensors")
    torch.testing.assert_close(load_cache(tmp_path / "one.safetensors")["mlp_output.2"], whole["mlp_output", 2])


# ---------------------------------------------------------------- attribution


def test_attribution_is_first_order_taylor_by_hand(llama):
    clean, corr = tm.ids(1, 6, seed=1), tm.ids(1, 6, seed=2)
    metric = logit_diff(3, 5)
    attr = attribution_patching(llama, clean, corr, metric, components=["mlp_output", "head_attention_value_output"])
    layer = llama.model.layers[1]
    a_clean = tm.capture(llama, layer.mlp, clean)
    store = {}

    def keep(t):
        t = t.detach().requires_grad_(True)
        store["t"] = t
        return t

    with tm.hooked(layer.mlp, keep), torch.enable_grad():
        lg = llama(**corr).logits
        metric(lg[:, -1]).sum().backward()
    by_hand = ((a_clean - store["t"].detach()) * store["t"].grad).sum(-1)[0]  # (positions,)
    torch.testing.assert_close(attr["mlp_output"].values[1], by_hand)
    assert attr["head_attention_value_output"].axes == ("layer", "position", "head")
    # the per-head values of a layer add up to the estimate for the whole o_proj input
    whole = attribution_patching(llama, clean, corr, metric, components=["attention_value_output"])
    torch.testing.assert_close(attr["head_attention_value_output"].values.sum(-1), whole["attention_value_output"].values,
                               atol=1e-6, rtol=1e-4)


def test_attribution_tracks_exact_patching(llama):
    clean, corr = tm.ids(1, 6, seed=1), tm.ids(1, 6, seed=2)
    metric = logit_diff(3, 5)
    comps = ["mlp_output", "head_attention_value_output"]
    attr = attribution_patching(llama, clean, corr, metric, components=comps)
    exact = activation_patching(llama, clean, corr, metric, components=comps, progress=False)
    agree = compare_with_patching(attr, exact)
    assert agree["mlp_output"]["spearman"] > 0.8 and agree["head_attention_value_output"]["spearman"] > 0.8


def test_rank_correlation_hand_values():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (0, 1.5, 1.5, 3)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


# ---------------------------------------------------------------- lens / DLA


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_logit_lens_is_unembed_of_norm_of_resid(which, llama, gpt2):
    model = llama if which == "llama" else gpt2
    x = tm.ids(1, 6)
    lens = logit_lens(model, x, positions=None, target=11)
    layers = model.model.layers if which == "llama" else model.transformer.h
    norm = model.model.norm if which == "llama" else model.transformer.ln_f
    head = model.lm_head
    with torch.no_grad():
        for l, layer in enumerate(layers):
            by_hand = head(norm(tm.capture(model, layer, x))).log_softmax(-1)[0, :, 11]
            torch.testing.assert_close(lens["logprob"].values[l + 1], by_hand, atol=1e-5, rtol=1e-5)
        emb = head(norm(tm.capture(model, layers[0], x, pre=True))).log_softmax(-1)[0, :, 11]
    torch.testing.assert_close(lens["logprob"].values[0], emb, atol=1e-5, rtol=1e-5)
    assert lens["logprob"].labels["layer"][0] == "embed"
    assert lens.meta["max_abs_error_last_layer"] < 1e-4


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_dla_parts_add_up_to_the_logit_difference(which, llama, gpt2):
    model = llama if which == "llama" else gpt2
    x = tm.ids(2, 6)
    dla = direct_logit_attribution(model, x, 3, 5)
    with torch.no_grad():
        lg = model(**x).logits[:, -1]
    assert dla.meta["logit_diff"] == pytest.approx(float((lg[:, 3] - lg[:, 5]).mean()), abs=1e-5)
    assert float(dla["components"].values.sum()) == pytest.approx(dla.meta["logit_diff"], abs=1e-4)
    comps = dla["components"]
    attn = torch.stack([comps.values[comps.index("component", f"attn {l}")] for l in range(3)])
    torch.testing.assert_close(dla["heads"].values.sum(-1), attn, atol=1e-5, rtol=1e-4)
    # one MLP by hand: W_U direction . (frozen-scale norm of the part)
    if which == "llama":
        final = tm.capture(model, model.model.layers[-1], x)[:, -1]
        mlp = tm.capture(model, model.model.layers[1].mlp, x)[:, -1]
        rms = final.pow(2).mean(-1, keepdim=True).add(model.model.norm.variance_epsilon).sqrt()
        d = model.lm_head.weight[3] - model.lm_head.weight[5]
        by_hand = ((model.model.norm.weight * mlp / rms) @ d).mean()
        assert float(comps.values[comps.index("component", "mlp 1")]) == pytest.approx(float(by_hand), abs=1e-5)


# ---------------------------------------------------------------- results


def test_grid_pandas_json_plot(tmp_path):
    g = Grid(torch.arange(6.0).view(2, 3), ("layer", "position"), {"position": ["a", "b", "c"]}, "score", {"x": 1})
    df = g.to_pandas()
    assert list(df.columns) == ["layer", "position", "score"] and df.shape == (6, 3)
    assert df[(df.layer == 1) & (df.position == "b")].score.item() == 4.0
    g.save_json(tmp_path / "g.json")
    back = load_result(tmp_path / "g.json")
    torch.testing.assert_close(back.values, g.values)
    assert back.labels == g.labels and back.meta == {"x": 1}
    assert g.top(1)[0] == ({"layer": 1, "position": "c"}, 5.0)
    assert g.sel(layer=1).values.tolist() == [3.0, 4.0, 5.0]
    from matplotlib.figure import Figure
    assert isinstance(g.plot(), Figure)
    gs = GridSet({"a": g, "b": Grid(torch.ones(2, 3, 4), ("layer", "position", "head"))})
    assert isinstance(gs.plot(), Figure) and len(gs.to_pandas()) == 6 + 24
    gs.save_json(tmp_path / "s.json")
    assert isinstance(load_result(tmp_path / "s.json"), GridSet)
    with pytest.raises(pv.ConfigError, match="labels"):
        Grid(torch.zeros(2), ("layer",), {"layer": [1, 2, 3]})
