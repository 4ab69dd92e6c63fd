"""vene.analysis: causal tracing and activation patching sweeps against naive hand-hook loops."""
from __future__ import annotations

import json

import pytest
import torch

import tiny_models
from tiny_models import capture, hooked

import vene
from vene.analysis import (
    activation_patching,
    causal_trace,
    guess_subject,
    logit_diff,
    plot_causal_trace,
    plot_patching,
)
from vene.analysis.causal_trace import window_layers

ATOL = 1e-5


def _parts(model):
    """(layers, {component: module getter}) for the tiny Llama / GPT-2 LMs."""
    if hasattr(model, "model"):
        layers = model.model.layers
        return layers, {"block_output": lambda l: layers[l], "mlp_output": lambda l: layers[l].mlp,
                        "attention_output": lambda l: layers[l].self_attn}
    layers = model.transformer.h
    return layers, {"block_output": lambda l: layers[l], "mlp_output": lambda l: layers[l].mlp,
                    "attention_output": lambda l: layers[l].attn}


def _restorer(clean, tok, rows=None):
    def fn(t):
        t = t.clone()
        t[:, tok] = clean[:, tok] if rows is None else clean[rows, tok]
        return t
    return fn


def naive_trace(model, ids, positions, noise, answer, comp, window):
    """One forward per restoration; clean activations captured by hand."""
    layers, get = _parts(model)
    n, seq, S = len(layers), ids.shape[1], noise.shape[0]
    emb = model.get_input_embeddings()
    clean = [capture(model, get[comp](l), {"input_ids": ids}) for l in range(n)]
    batch = ids.expand(S, -1)

    def add_noise(t):
        t = t.clone()
        t[:, positions] += noise
        return t

    grid = torch.empty(n, seq)
    with torch.no_grad():
        for layer in range(n):
            for tok in range(seq):
                ctxs = [hooked(emb, add_noise)] + [hooked(get[comp](l), _restorer(clean[l], tok)) for l in window_layers(layer, window, n)]
                for c in ctxs:
                    c.__enter__()
                try:
                    grid[layer, tok] = model(input_ids=batch).logits[:, -1].softmax(-1)[:, answer].mean()
                finally:
                    for c in reversed(ctxs):
                        c.__exit__(None, None, None)
        with hooked(emb, add_noise):
            p_corr = float(model(input_ids=batch).logits[:, -1].softmax(-1)[:, answer].mean())
        p_clean = float(model(input_ids=ids).logits[0, -1].softmax(-1)[answer])
    return grid, p_clean, p_corr


@pytest.fixture(scope="module")
def llama_lm():
    return tiny_models.llama(n_layer=4)


@pytest.fixture(scope="module")
def gpt2_lm4():
    return tiny_models.gpt2(lm=True, n_layer=4)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("strategy", ["auto", "step", "forward"])
def test_causal_trace_equals_naive_loop(which, strategy, llama_lm, gpt2_lm4):
    model = llama_lm if which == "llama" else gpt2_lm4
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    d = model.get_input_embeddings().weight.shape[1]
    noise = torch.randn(3, 2, d, generator=torch.Generator().manual_seed(1)) * 0.5
    answer = 7
    comps = ("block_output", "mlp_output", "attention_output")
    res = causal_trace(model, None, ids, answer, subject=[1, 2], components=comps, window=3, noise=noise,
                       progress=False, strategy=strategy)
    assert res.extra["strategy"] == {"auto": "step+prefix", "step": "step", "forward": "forward"}[strategy]
    assert res.samples == 3 and res.subject_positions == [1, 2] and res.window == {"block_output": 1, "mlp_output": 3, "attention_output": 3}
    for comp in comps:
        w = 1 if comp == "block_output" else 3
        grid, p_clean, p_corr = naive_trace(model, ids, [1, 2], noise, answer, comp, w)
        assert res.scores[comp].shape == (4, 6)
        torch.testing.assert_close(res.scores[comp], grid, atol=ATOL, rtol=0)
        assert res.p_clean == pytest.approx(p_clean, abs=ATOL)
        assert res.p_corrupted == pytest.approx(p_corr, abs=ATOL)
    # the restorations do something: at the last layer, restoring the last token gives the clean run
    assert res.scores["block_output"][-1, -1] == pytest.approx(res.p_clean, abs=ATOL)
    # ...and restoring a token left of the subject changes nothing (causal attention)
    torch.testing.assert_close(res.scores["block_output"][:, 0], torch.full((4,), res.p_corrupted), atol=ATOL, rtol=0)


def test_window_layers_is_romes_interval():
    assert window_layers(0, 10, 30) == list(range(0, 5))
    assert window_layers(15, 10, 30) == list(range(10, 20))
    assert window_layers(29, 10, 30) == list(range(24, 30))
    assert window_layers(3, 1, 30) == [3]
    assert window_layers(2, 3, 4) == [1, 2, 3]


def test_chunking_and_one_recording_pass(llama_lm):
    """A tiny memory budget splits the sweep into many chunks with the same result, and the model's
    embedding runs once: the clean and corrupted runs share the only full forward pass."""
    ids = tiny_models.ids(seq=5, seed=4)["input_ids"]
    calls = []
    h = llama_lm.get_input_embeddings().register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        big = causal_trace(llama_lm, None, ids, 3, subject=[0, 1], samples=2, noise=0.3, progress=False,
                           components=("block_output", "mlp_output"), window=2)
        assert calls == [3]  # 1 clean row + 2 noise rows, once
        small = causal_trace(llama_lm, None, ids, 3, subject=[0, 1], samples=2, noise=0.3, progress=False,
                             components=("block_output", "mlp_output"), window=2, memory_budget=1)
    finally:
        h.remove()
    for c in big.scores:
        torch.testing.assert_close(big.scores[c], small.scores[c], atol=ATOL, rtol=0)
    # the same seed gives the same noise; a different seed different noise
    again = causal_trace(llama_lm, None, ids, 3, subject=[0, 1], samples=2, noise=0.3, progress=False, components=("block_output",))
    other = causal_trace(llama_lm, None, ids, 3, subject=[0, 1], samples=2, noise=0.3, seed=5, progress=False, components=("block_output",))
    torch.testing.assert_close(again.scores["block_output"], big.scores["block_output"], atol=ATOL, rtol=0)
    assert not torch.allclose(other.scores["block_output"], big.scores["block_output"])


def naive_patching(model, clean, corr, metric, module_of, positions, head=None, n_heads=None, pre=False):
    layers, _ = _parts(model)
    out = []
    with torch.no_grad():
        for l in range(len(layers)):
            act = capture(model, module_of(l), {"input_ids": clean}, pre=pre)
            row = []
            for p in positions:
                def fn(t, p=p, act=act):
                    t = t.clone()
                    if head is None:
                        t[:, p] = act[:, p]
                    else:
                        b, s, _ = t.shape
                        t.view(b, s, n_heads, -1)[:, p, head] = act.view(b, s, n_heads, -1)[:, p, head]
                    return t
                with hooked(module_of(l), fn, pre=pre):
                    row.append(float(metric(model(input_ids=corr).logits[:, -1]).mean()))
            out.append(row)
    return torch.tensor(out)


def test_activation_patching_equals_naive(llama_lm):
    clean = tiny_models.ids(batch=2, seq=6, seed=5)["input_ids"]
    corr = tiny_models.ids(batch=2, seq=6, seed=6)["input_ids"]
    metric = logit_diff(3, 9)
    res = activation_patching(llama_lm, clean, corr, metric, components=("block_output", "mlp_output", "head_attention_value_output"),
                              progress=False)
    assert res.extra["strategy"] == "step+prefix"
    layers = llama_lm.model.layers
    torch.testing.assert_close(res.scores["block_output"], naive_patching(llama_lm, clean, corr, metric, lambda l: layers[l], range(6)), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.scores["mlp_output"], naive_patching(llama_lm, clean, corr, metric, lambda l: layers[l].mlp, range(6)), atol=ATOL, rtol=0)
    heads = res.scores["head_attention_value_output"]
    assert heads.shape == (4, 6, 4) and res.heads["head_attention_value_output"] == [0, 1, 2, 3]
    for h in (0, 3):
        want = naive_patching(llama_lm, clean, corr, metric, lambda l: layers[l].self_attn.o_proj, range(6), head=h, n_heads=4, pre=True)
        torch.testing.assert_close(heads[:, :, h], want, atol=ATOL, rtol=0)
    with torch.no_grad():
        assert res.clean_metric == pytest.approx(float(metric(llama_lm(input_ids=clean).logits[:, -1]).mean()), abs=ATOL)
        assert res.corrupted_metric == pytest.approx(float(metric(llama_lm(input_ids=corr).logits[:, -1]).mean()), abs=ATOL)
    # patching the whole residual stream at the last layer gives back the clean run
    all_pos = activation_patching(llama_lm, clean, corr, metric, positions="all", layers=[3], progress=False)
    assert all_pos.scores["block_output"].shape == (1, 1)
    assert float(all_pos.scores["block_output"][0, 0]) == pytest.approx(res.clean_metric, abs=ATOL)
    norm = res.normalized()["block_output"]
    assert float(norm[-1, -1]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_patching_with_left_padding(which, llama_lm, gpt2_lm4):
    """Padded batches: the recorded masks are re-indexed and cut correctly for every row."""
    model = llama_lm if which == "llama" else gpt2_lm4
    layers, get = _parts(model)
    clean = tiny_models.ids(batch=2, seq=6, seed=11)["input_ids"]
    corr = tiny_models.ids(batch=2, seq=6, seed=12)["input_ids"]
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    metric = logit_diff(5, 6)
    res = activation_patching(model, {"input_ids": clean, "attention_mask": mask}, {"input_ids": corr, "attention_mask": mask},
                              metric, components=("block_output",), progress=False)
    assert res.extra["strategy"] in ("step+prefix", "step")
    want = torch.empty(len(layers), 6)
    with torch.no_grad():
        for l in range(len(layers)):
            act = capture(model, layers[l], {"input_ids": clean, "attention_mask": mask})
            for p in range(6):
                with hooked(layers[l], _restorer(act, p, rows=torch.arange(2))):
                    want[l, p] = metric(model(input_ids=corr, attention_mask=mask).logits[:, -1]).mean()
    torch.testing.assert_close(res.scores["block_output"], want, atol=ATOL, rtol=0)


def test_patching_gpt2_forward_and_step_agree(gpt2_lm4):
    clean = tiny_models.ids(seq=5, seed=7)["input_ids"]
    corr = tiny_models.ids(seq=5, seed=8)["input_ids"]
    kw = dict(components=("attention_output", "head_attention_value_output"), positions=[1, 4], heads=[0, 2], progress=False)
    a = activation_patching(gpt2_lm4, clean, corr, logit_diff(1, 2), **kw)
    b = activation_patching(gpt2_lm4, clean, corr, logit_diff(1, 2), strategy="forward", **kw)
    assert a.extra["strategy"] == "step+prefix" and b.extra["strategy"] == "forward"
    assert a.scores["head_attention_value_output"].shape == (4, 2, 2)
    for c in a.scores:
        torch.testing.assert_close(a.scores[c], b.scores[c], atol=ATOL, rtol=0)
    want = naive_patching(gpt2_lm4, clean, corr, logit_diff(1, 2), lambda l: gpt2_lm4.transformer.h[l].attn, [1, 4])
    torch.testing.assert_close(a.scores["attention_output"], want, atol=ATOL, rtol=0)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_errors_leave_the_model_untouched(llama_lm):
    ids = tiny_models.ids(seq=5)["input_ids"]
    before = _hook_count(llama_lm)
    state = {k: v.clone() for k, v in llama_lm.state_dict().items()}
    with pytest.raises(vene.UnknownComponentError, match="block_outptu"):
        causal_trace(llama_lm, None, ids, 1, subject=[1], components=("block_outptu",), progress=False)
    with pytest.raises(vene.ConfigError, match="out of range"):
        causal_trace(llama_lm, None, ids, 1, subject=[9], progress=False)
    with pytest.raises(vene.ConfigError, match="noise tensor"):
        causal_trace(llama_lm, None, ids, 1, subject=[1, 2], noise=torch.zeros(3, 32), progress=False)
    with pytest.raises(vene.SourceError, match="same number of tokens"):
        activation_patching(llama_lm, ids, ids[:, :4], logit_diff(1, 2), progress=False)
    with pytest.raises(vene.ConfigError, match="heads"):
        activation_patching(llama_lm, ids, ids, logit_diff(1, 2), components=("head_attention_value_output",), heads=[7], progress=False)
    assert _hook_count(llama_lm) == before
    assert all(torch.equal(v, state[k]) for k, v in llama_lm.state_dict().items())


def test_foreign_hooks_survive_and_fire(llama_lm):
    seen = []
    h = llama_lm.model.layers[2].register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        causal_trace(llama_lm, None, tiny_models.ids(seq=4)["input_ids"], 1, subject=[1], samples=1, progress=False,
                     components=("block_output",))
        assert seen  # the user's hook ran during the sweep, and is still installed
        assert llama_lm.model.layers[2]._forward_hooks
    finally:
        h.remove()


def test_guess_subject():
    assert guess_subject("The Eiffel Tower is located in the city of") == "Eiffel Tower"
    assert guess_subject("Michael Jordan plays the sport of") == "Michael Jordan"
    assert guess_subject("the cat sat on the") is None


# ---------------------------------------------------------------------------------------------
# a tiny model directory with a word-level tokenizer: subject lookup, plots and the CLI

WORDS = "The Eiffel Tower is located in the city of Paris Rome Colosseum".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]")
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_models.llama(n_layer=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def test_subject_positions_from_text(tiny_dir, llama_lm):
    _, tok = tiny_dir
    res = causal_trace(llama_lm, tok, "The Eiffel Tower is located in the city of", "Paris", samples=2,
                       components=("block_output",), progress=False)
    assert res.subject_positions == [1, 2]  # guessed "Eiffel Tower"
    assert res.tokens[:3] == ["The", "Eiffel", "Tower"]
    assert res.answer_id == WORDS.index("Paris") + 1
    res2 = causal_trace(llama_lm, tok, "The Eiffel Tower is located in the city of", None, subject="The Eiffel",
                        samples=1, components=("block_output",), progress=False)
    assert res2.subject_positions == [0, 1]
    with torch.no_grad():
        ids = tok("The Eiffel Tower is located in the city of", return_tensors="pt")["input_ids"]
        assert res2.answer_id == int(llama_lm(input_ids=ids).logits[0, -1].argmax())
    with pytest.raises(vene.ConfigError, match="does not occur"):
        causal_trace(llama_lm, tok, "The Eiffel Tower is located in the city of", "Paris", subject="Louvre", progress=False)


def test_plots_are_figures(llama_lm, tmp_path):
    from matplotlib.figure import Figure

    ids = tiny_models.ids(seq=5)["input_ids"]
    res = causal_trace(llama_lm, None, ids, 2, subject=[1, 2], samples=1, progress=False)
    fig = plot_causal_trace(res)
    assert isinstance(fig, Figure) and [a.get_title() for a in fig.axes if a.get_label() != "<colorbar>"] == [
        "Impact of restoring state after corrupted input", "Impact of restoring MLP after corrupted input",
        "Impact of restoring attention after corrupted input"]
    assert fig.axes[0].get_yticklabels()[1].get_text().endswith("*")  # subject token marked
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    pres = activation_patching(llama_lm, ids, tiny_models.ids(seq=5, seed=9)["input_ids"], logit_diff(1, 2),
                               components=("block_output", "head_attention_value_output"), positions=[4], progress=False)
    fig2 = plot_patching(pres)
    assert isinstance(fig2, Figure) and len([a for a in fig2.axes if a.get_label() != "<colorbar>"]) == 2
    d = res.to_dict()
    assert json.loads(json.dumps(d))["scores"]["block_output"][1][2] == pytest.approx(float(res.scores["block_output"][1, 2]))


def test_cli_trace_end_to_end(tiny_dir, tmp_path, capsys):
    from vene.cli import main

    path, _ = tiny_dir
    out = tmp_path / "trace"
    rc = main(["trace", "The Eiffel Tower is located in the city of", "--answer", " Paris", "--subject", "Eiffel Tower",
               "--model", str(path), "--out", str(out), "--samples", "2", "--window", "2", "--no-progress", "--dpi", "40"])
    assert rc == 0
    data = json.loads((out / "trace.json").read_text())
    assert set(data) >= {"model", "prompt", "answer", "tokens", "subject_positions", "p_clean", "p_corrupted", "scores"}
    assert data["subject_positions"] == [1, 2] and data["answer"] == " Paris" and data["model"] == str(path)
    assert set(data["scores"]) == {"block_output", "mlp_output", "attention_output"}
    assert len(data["scores"]["mlp_output"]) == 3 and len(data["scores"]["mlp_output"][0]) == 9
    assert (out / "trace.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "p_clean" in printed and "block_output" in printed and "peak" in printed

    out2 = tmp_path / "patch"
    rc = main(["patch", "The Eiffel Tower is located in the city of", "The Colosseum Tower is located in the city of",
               "--answer", "Paris", "--wrong", "Rome", "--model", str(path), "--out", str(out2), "--no-progress", "--dpi", "40",
               "--components", "block_output"])
    assert rc == 0
    pdata = json.loads((out2 / "patch.json").read_text())
    assert pdata["answer"] == "Paris" and len(pdata["scores"]["block_output"]) == 3
    assert (out2 / "patch.png").exists()

    out3 = tmp_path / "zero"
    rc = main(["trace", "The Eiffel Tower is located in the city of", "--answer", " Paris", "--subject", "Eiffel Tower",
               "--model", str(path), "--out", str(out3), "--corruption", "zero", "--components", "block_output",
               "--no-progress", "--no-plot"])
    assert rc == 0
    zdata = json.loads((out3 / "trace.json").read_text())
    assert zdata["corruption"] == "zero" and zdata["samples"] == 1 and zdata["noise_std"] is None
    assert "zero corruption" in capsys.readouterr().out


def test_cli_reports_bad_input(tiny_dir, tmp_path, capsys):
    from vene.cli import main

    path, _ = tiny_dir
    rc = main(["trace", "The Eiffel Tower is located in the city of", "--subject", "Louvre", "--model", str(path),
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 2 and "Louvre" in capsys.readouterr().err


def test_cli_steer(tiny_dir, tmp_path, capsys):
    """Scale 0 reproduces plain greedy generation; a large scale changes it."""
    from vene.cli import main

    path, _ = tiny_dir
    outs = {}
    for scale in ("0", "300"):
        rc = main(["steer", "The Eiffel", "--word", "Paris", "--scale", scale, "--model", str(path),
                   "--max-new-tokens", "6", "--out", str(tmp_path / scale)])
        assert rc == 0
        outs[scale] = json.loads((tmp_path / scale / "steer.json").read_text())
    assert outs["0"]["steered"] == outs["0"]["original"]
    assert outs["300"]["steered"] != outs["300"]["original"]
    assert "steered:" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_trace_embedded_model(tmp_path, capsys):
    from vene.cli import main

    assert main(["trace", "--out", str(tmp_path), "--samples", "2", "--no-progress", "--components", "block_output"]) == 0
    data = json.loads((tmp_path / "trace.json").read_text())
    assert data["subject_positions"] == [1, 2, 3]
    assert data["p_clean"] == pytest.approx(0.70, abs=0.02)
    assert data["p_corrupted"] < 0.2
    grid = torch.tensor(data["scores"]["block_output"])  # (layers, tokens)
    assert float(grid[:8, 1:4].max()) > 0.4   # subject tokens, early layers
    assert float(grid[24:, -1].max()) > 0.4   # last token, late layers
    assert float(grid[:10, -1].max()) < 0.2   # last token, early layers: nothing yet


def naive_replacement_trace(model, ids, positions, targets, answer):
    """block_output restorations with the subject's embeddings *replaced* by ``targets``
    ``(samples, n_subject, d)``: one forward per cell, by hand."""
    layers, get = _parts(model)
    n, seq, S = len(layers), ids.shape[1], targets.shape[0]
    emb = model.get_input_embeddings()
    clean = [capture(model, get["block_output"](l), {"input_ids": ids}) for l in range(n)]
    batch = ids.expand(S, -1)

    def replace(t):
        t = t.clone()
        t[:, positions] = targets
        return t

    grid = torch.empty(n, seq)
    with torch.no_grad():
        for layer in range(n):
            for tok in range(seq):
                with hooked(emb, replace), hooked(get["block_output"](layer), _restorer(clean[layer], tok)):
                    grid[layer, tok] = model(input_ids=batch).logits[:, -1].softmax(-1)[:, answer].mean()
        with hooked(emb, replace):
            p_corr = float(model(input_ids=batch).logits[:, -1].softmax(-1)[:, answer].mean())
    return grid, p_corr


@pytest.mark.parametrize("corruption", ["zero", "mean", "resample"])
def test_causal_trace_ablation_corruptions_equal_hand_replacement(corruption, llama_lm):
    """Zero, mean and resample ablation of the subject, as well as ROME's noise: the trace equals
    a hand loop that writes the replacement embeddings into the subject positions."""
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    weight = llama_lm.get_input_embeddings().weight.detach()
    subj = [1, 2]
    if corruption == "zero":
        targets = torch.zeros(1, 2, weight.shape[1])
    elif corruption == "mean":
        targets = weight.mean(0).expand(1, 2, -1)
    else:  # the documented draw: uniform tokens from a generator seeded with `seed`, never the subject's own
        draws = torch.randint(0, weight.shape[0], (4, 2), generator=torch.Generator().manual_seed(5))
        draws = torch.where(draws == ids[0, subj], (draws + 1) % weight.shape[0], draws)
        targets = weight[draws]
    res = causal_trace(llama_lm, None, ids, 7, subject=subj, components=("block_output",), progress=False,
                       corruption=corruption, samples=4 if corruption == "resample" else None, seed=5)
    grid, p_corr = naive_replacement_trace(llama_lm, ids, subj, targets, 7)
    assert res.corruption == corruption and res.noise_std is None
    assert res.samples == (4 if corruption == "resample" else 1)
    assert res.p_corrupted == pytest.approx(p_corr, abs=ATOL)
    torch.testing.assert_close(res.scores["block_output"], grid, atol=ATOL, rtol=0)
    again = type(res).from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.corruption == corruption
    assert f"{corruption} corruption" in res.summary()


def test_causal_trace_corruption_errors(llama_lm):
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    kw = dict(subject=[1, 2], components=("block_output",), progress=False)
    with pytest.raises(vene.ConfigError, match="corruption must be one of"):
        causal_trace(llama_lm, None, ids, 7, corruption="gaussian", **kw)
    with pytest.raises(vene.ConfigError, match="deterministic"):
        causal_trace(llama_lm, None, ids, 7, corruption="zero", samples=3, **kw)
    with pytest.raises(vene.ConfigError, match="noise= sets"):
        causal_trace(llama_lm, None, ids, 7, corruption="mean", noise=0.3, **kw)
    zero = causal_trace(llama_lm, None, ids, 7, corruption="zero", **kw)
    with pytest.raises(vene.ConfigError, match="corruption"):  # a resumed run keeps its corruption
        causal_trace(llama_lm, None, ids, 7, corruption="mean", resume=zero, **kw)


def test_sweep_results_to_grids_and_pandas(llama_lm):
    """Causal-trace and patching results give labelled grids and long-form DataFrames whose
    cells are the scores."""
    pd = pytest.importorskip("pandas")
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    tr = causal_trace(llama_lm, None, ids, 7, subject=[1, 2], components=("block_output", "mlp_output"), window=1,
                      positions=[0, 2, 5], samples=2, progress=False)
    gs = tr.to_grids()
    g = gs["mlp_output"]
    assert g.axes == ("layer", "position") and g.labels["position"] == [0, 2, 5] and g.labels["layer"] == [0, 1, 2, 3]
    assert float(g.sel(layer=2, position=5).values) == pytest.approx(float(tr.scores["mlp_output"][2, 2]))
    df = tr.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 4 * 3
    row = df[(df.grid == "block_output") & (df.layer == 1) & (df.position == 2)]
    assert float(row.value.iloc[0]) == pytest.approx(float(tr.scores["block_output"][1, 1]))
    full = causal_trace(llama_lm, None, ids, 7, subject=[1, 2], components=("block_output",), samples=2, progress=False)
    from vene.analysis.average import average_traces

    avg = average_traces([full, full])
    adf = avg.to_pandas()
    assert list(adf.columns) == ["grid", "layer", "role", "value"] and len(adf) == 4 * len(avg.tokens)
    ag = avg.to_grids()["block_output"]
    torch.testing.assert_close(ag.values, avg.scores["block_output"].float(), equal_nan=True)

    def metric(logits):
        return logits[:, 7] - logits[:, 9]

    clean, corr = ids, tiny_models.ids(seq=6, seed=4)["input_ids"]
    pr = activation_patching(llama_lm, clean, corr, metric, components=["head_attention_value_output"], positions=[5],
                             layers=[1, 3], progress=False)
    hg = pr.to_grids()["head_attention_value_output"]
    assert hg.axes == ("layer", "position", "head") and hg.labels["layer"] == [1, 3] and hg.shape == (2, 1, 4)
    pdf = pr.to_pandas()
    assert len(pdf) == 2 * 1 * 4
    cell = pdf[(pdf["layer"] == 3) & (pdf["head"] == 2)]
    assert float(cell.value.iloc[0]) == pytest.approx(float(pr.scores["head_attention_value_output"][1, 0, 2]))
