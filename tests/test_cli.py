"""The `vene` command as a researcher uses it: validation before loading, warnings, interrupts and
resume, restricted sweeps, figures and JSON that reload, global options, did-you-mean, extras hints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_models
from vene import cli
from vene.analysis import CausalTraceResult, PatchingResult, SweepInterrupted, causal_trace
from vene.analysis import sweep as sweep_mod
from vene.analysis.average import ROLES, AverageTraceResult, average_traces, token_roles
from vene.analysis.causal_trace import TraceWarning, guess_subject, weak_subject_reason

SRC = str(Path(__file__).resolve().parents[1] / "src")
WORDS = "The In Once upon time Eiffel Tower is located in the city of Paris Rome Colosseum".split()
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]")
    path = tmp_path_factory.mktemp("tiny_llama_cli")
    tiny_models.llama(n_layer=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model's weights are loaded."""
    from vene.models import embedded

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(embedded, "load_model", boom)


def _run(args, tiny, out, *extra):
    path, _ = tiny
    return cli.main([*args, "--model", str(path), "--out", str(out), *extra])


# ---------------------------------------------------------------------------------------------
# parsing, help, version, global options


def _py(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_help_and_version_do_not_import_torch():
    r = _py("import sys\nfrom vene.cli import main\n"
            "for a in (['--help'], ['trace', '--help'], ['--version']):\n"
            "    try: main(a)\n"
            "    except SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("NO TORCH")
    assert "vene 0.1.0" in r.stdout and "--resume" in r.stdout


def test_python_dash_m_vene_works_like_vene():
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-m", "vene", "--version"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "vene 0.1.0"
    r = subprocess.run([sys.executable, "-m", "vene", "trcae"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Did you mean 'trace'?" in r.stderr


def test_global_options_work_before_and_after_the_command():
    p = cli.build_parser()
    a = p.parse_args(["trace", "-v", "--samples", "3"])
    assert a.verbose == 1 and a.quiet is False and a.samples == 3
    a = p.parse_args(["-q", "trace"])
    assert a.quiet is True and a.verbose == 0
    a = p.parse_args(["patch", "a", "b", "-vv", "--no-progress"])
    assert a.verbose == 2 and a.no_progress is True


def test_did_you_mean(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pach", "a", "b"])
    assert e.value.code == 2
    assert "unknown command 'pach'. Did you mean 'patch'?" in capsys.readouterr().err


def test_every_option_has_help_text():
    p = cli.build_parser()
    sub = p._subparsers._group_actions[0]
    for name, sp in [("vene", p), *sub.choices.items()]:
        for action in sp._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("argv, message", [
    (["trace", "--samples", "0"], "--samples: must be at least 1"),
    (["trace", "--window", "-2"], "--window: must be at least 1"),
    (["trace", "--noise", "0"], "--noise: must be greater than 0"),
    (["trace", "--positions", "a,b"], "--positions: expected comma-separated numbers"),
    (["trace", "--format", "png,gif"], "--format: formats must be among png,pdf,svg"),
])
def test_bad_numbers_are_refused_before_anything_loads(argv, message, capsys, no_model_load):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_int_list():
    assert cli.int_list("3,5,7-9,-1") == [3, 5, 7, 8, 9, -1]


def test_missing_extra_gives_the_pip_hint(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    rc = cli.main(["trace", "--no-plot", "--out", str(tmp_path)])
    assert rc == 2 and "pip install 'vene[hf]'" in capsys.readouterr().err


def test_module_not_found_for_an_extra_is_translated(monkeypatch, capsys, tmp_path):
    from vene import cli_commands

    def missing(args):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(cli_commands, "cmd_steer", missing)
    assert cli.main(["steer"]) == 2
    assert "pip install 'vene[viz]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# validation and warnings


def test_subject_guesses():
    assert guess_subject("In 1889, the Eiffel Tower was located in") == "Eiffel Tower"
    assert guess_subject("Q: Where is the Eiffel Tower? A:") == "Eiffel Tower"
    assert guess_subject("Once upon a time there was a") is None
    assert guess_subject("the iPhone was made by") == "iPhone"
    assert guess_subject("The Eiffel Tower is located in") == "Eiffel Tower"
    assert weak_subject_reason("Paris is the capital of", "Paris") is not None
    assert weak_subject_reason("The Eiffel Tower is", "Eiffel Tower") is None


def test_multi_token_answer_is_refused_before_the_model_loads(tiny_dir, tmp_path, capsys, no_model_load):
    rc = _run(["trace", PROMPT, "--answer", "Paris Rome"], tiny_dir, tmp_path, "--no-plot")
    err = capsys.readouterr().err
    assert rc == 2 and "is 2 tokens ['Paris', 'Rome']" in err and "--answer 'Paris'" in err
    assert not (tmp_path / "trace.json").exists()


def test_multi_token_answer_is_refused_by_the_library(llama_lm, tiny_dir):
    _, tok = tiny_dir
    with pytest.raises(ValueError, match="one next token"):
        causal_trace(llama_lm, tok, PROMPT, "Paris Rome", progress=False)


def test_subject_that_cannot_be_guessed_is_refused_before_loading(tiny_dir, tmp_path, capsys, no_model_load):
    rc = _run(["trace", "Once upon time"], tiny_dir, tmp_path, "--no-plot")
    assert rc == 2 and "pass --subject" in capsys.readouterr().err


def test_subject_is_shown_before_the_run_and_a_weak_guess_warns(tiny_dir, tmp_path, capsys, no_model_load):
    # the subject line is printed before the model loads (which fails here on purpose)
    with pytest.raises(AssertionError, match="was loaded"):
        _run(["trace", "Paris is located in the city of", "--answer", "Rome"], tiny_dir, tmp_path, "--no-plot")
    err = capsys.readouterr().err
    assert "subject (guessed): 'Paris' = tokens 'Paris' at positions [0]" in err
    assert "WARNING: the guessed subject may be wrong" in err and "--subject" in err


def test_unlikely_answer_warns_with_the_top_predictions(llama_lm):
    ids = tiny_models.ids(seq=5)["input_ids"]
    logits = llama_lm(input_ids=ids).logits[0, -1]
    worst = int(logits.argmin())
    with pytest.warns(TraceWarning, match="not among the model's top 10 predictions") as rec:
        res = causal_trace(llama_lm, None, ids, worst, subject=[1], samples=1, components=("block_output",), progress=False)
    assert str(int(logits.argmax())) in str(rec[0].message)  # the top prediction is named
    assert res.answer_rank == logits.numel() and res.warnings and "top 10" in res.warnings[0]
    best = int(logits.argmax())
    res2 = causal_trace(llama_lm, None, ids, best, subject=[1], samples=1, components=("block_output",), progress=False)
    assert res2.answer_rank == 1 and res2.warnings == []


# ---------------------------------------------------------------------------------------------
# restricted sweeps, interrupts, resume, JSON


@pytest.fixture(scope="module")
def llama_lm():
    return tiny_models.llama(n_layer=4)


def _trace(model, **kw):
    ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
    return causal_trace(model, None, ids, 7, subject=[1, 2], samples=2, noise=0.5, window=3, progress=False, **kw)


@pytest.fixture(scope="module")
def full(llama_lm):
    with pytest.warns(TraceWarning):
        return _trace(llama_lm)


@pytest.mark.filterwarnings("ignore::vene.analysis.causal_trace.TraceWarning")
def test_positions_and_layers_restrict_the_grid(llama_lm, full):
    part = _trace(llama_lm, positions=[-1, 1], layers=[0, 2])
    assert part.positions == [1, 5] and part.layers == [0, 2]
    for comp, g in part.scores.items():
        assert g.shape == (2, 2)
        torch.testing.assert_close(g, full.scores[comp][[0, 2]][:, [1, 5]], atol=2e-6, rtol=0)
    assert "token 5" in part.summary() or "token 1" in part.summary()


class _StopAfter:
    """Wraps SweepRunner.run: raises KeyboardInterrupt on call number ``n``."""

    def __init__(self, monkeypatch, n):
        self.calls, self.n, real = 0, n, sweep_mod.SweepRunner.run

        def run(runner, *a, **k):
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt
            return real(runner, *a, **k)

        monkeypatch.setattr(sweep_mod.SweepRunner, "run", run)


@pytest.mark.filterwarnings("ignore::vene.analysis.causal_trace.TraceWarning")
def test_interrupt_keeps_the_finished_cells_and_resume_completes_them(llama_lm, full, monkeypatch, tmp_path):
    stop = _StopAfter(monkeypatch, 3)
    with pytest.raises(SweepInterrupted) as e:
        _trace(llama_lm, memory_budget=1)  # one restoration per chunk
    part = e.value.result
    assert isinstance(e.value, KeyboardInterrupt)
    assert not part.complete and part.cells_done == 2 and part.cells_total == 3 * 4 * 6
    assert "PARTIAL: 2 of 72" in part.summary()
    done = ~torch.isnan(part.scores["block_output"])
    torch.testing.assert_close(part.scores["block_output"][done], full.scores["block_output"][done], atol=2e-6, rtol=0)
    part.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["complete"] is False and data["cells_done"] == 2 and None in sum(data["scores"]["block_output"], [])
    monkeypatch.undo()
    again = CausalTraceResult.from_json(tmp_path / "p.json")
    resumed = _trace(llama_lm, resume=again)
    assert resumed.complete and resumed.provenance["resumed"] == 1
    for comp in full.scores:
        torch.testing.assert_close(resumed.scores[comp], full.scores[comp], atol=2e-6, rtol=0)


@pytest.mark.filterwarnings("ignore::vene.analysis.causal_trace.TraceWarning")
def test_resume_refuses_a_different_run(llama_lm, full):
    with pytest.raises(ValueError, match="Cannot resume: the saved run has samples 2, this run 3"):
        ids = tiny_models.ids(seq=6, seed=3)["input_ids"]
        causal_trace(llama_lm, None, ids, 7, subject=[1, 2], samples=3, noise=0.5, window=3, progress=False, resume=full)


def test_trace_json_round_trip_with_provenance(full, tmp_path):
    full.save(tmp_path / "t.json")
    back = CausalTraceResult.from_json(tmp_path / "t.json")
    for comp in full.scores:
        torch.testing.assert_close(back.scores[comp], full.scores[comp])
    assert back.to_dict() == full.to_dict()
    prov = back.provenance
    assert prov["seed"] == 0 and prov["vene"] == "0.1.0" and prov["torch"] == torch.__version__
    assert prov["strategy"] == full.extra["strategy"] and prov["transformers"]
    assert prov["timings"]["sweep_s"] >= 0 and prov["timings"]["record_s"] >= 0
    with pytest.raises(ValueError, match="No such results file"):
        CausalTraceResult.from_json(tmp_path / "missing.json")


def test_trace_figure_is_titled(full):
    fig = full.plot()
    title = fig._suptitle.get_text()
    assert "Causal trace of" in title and "→ '7'" in title
    assert f"p_clean = {full.p_clean:.3g}" in title and "2 noise samples" in title


def test_patching_json_round_trip_and_named_metric(llama_lm):
    from vene.analysis import activation_patching, logit_diff

    a, b = tiny_models.ids(seq=5)["input_ids"], tiny_models.ids(seq=5, seed=9)["input_ids"]
    res = activation_patching(llama_lm, a, b, logit_diff(1, 2), progress=False, metric_name="logit(A) - logit(B)")
    back = PatchingResult.from_json(res.to_dict())
    torch.testing.assert_close(back.scores["block_output"], res.scores["block_output"])
    assert back.metric_name == "logit(A) - logit(B)" and back.provenance["timings"]["sweep_s"] >= 0
    fig = back.plot(normalize=True)
    assert "metric logit(A) - logit(B)" in fig._suptitle.get_text()
    assert activation_patching(llama_lm, a, b, logit_diff(1, 2), progress=False).metric_name == "logit[1] - logit[2]"


# ---------------------------------------------------------------------------------------------
# the command end to end on a tiny model


def test_cli_trace_formats_json_and_title(tiny_dir, tmp_path, capsys):
    rc = _run(["trace", PROMPT, "--answer", "Paris", "--samples", "2", "--window", "2", "--format", "png,pdf,svg",
               "--dpi", "30", "-q"], tiny_dir, tmp_path)
    assert rc == 0
    for ext in ("png", "pdf", "svg"):
        assert (tmp_path / f"trace.{ext}").stat().st_size > 1000
    assert "Causal trace of" in (tmp_path / "trace.svg").read_text()
    res = CausalTraceResult.from_json(tmp_path / "trace.json")
    assert res.complete and res.model_name == str(tiny_dir[0]) and res.subject_positions == [1, 2]
    assert res.provenance["seed"] == 0
    captured = capsys.readouterr()
    assert "loading" not in captured.err  # -q: no status lines
    assert "p_clean" in captured.out


def test_cli_ctrl_c_saves_a_partial_grid_and_resume_finishes_it(tiny_dir, tmp_path, capsys, monkeypatch):
    args = ["trace", PROMPT, "--answer", "Paris", "--samples", "2", "--window", "2", "--no-plot", "--no-progress"]
    assert _run(args, tiny_dir, tmp_path / "full") == 0
    full = CausalTraceResult.from_json(tmp_path / "full" / "trace.json")
    capsys.readouterr()
    monkeypatch.setattr(sweep_mod, "DEFAULT_MEMORY_BUDGET", 1)  # one restoration per chunk
    _StopAfter(monkeypatch, 4)
    rc = _run(args, tiny_dir, tmp_path / "cut")
    err = capsys.readouterr().err
    assert rc == 130
    line = [l for l in err.splitlines() if "interrupted" in l]
    assert len(line) == 1 and "saved 3 of 81 restorations (partial)" in line[0] and "--resume" in line[0]
    assert "Traceback" not in err
    part = json.loads((tmp_path / "cut" / "trace.json").read_text())
    assert part["complete"] is False and part["cells_done"] == 3
    monkeypatch.undo()
    rc = cli.main(["trace", "--resume", "--model", str(tiny_dir[0]), "--out", str(tmp_path / "cut"), "--no-plot",
                   "--no-progress"])
    assert rc == 0
    done = CausalTraceResult.from_json(tmp_path / "cut" / "trace.json")
    assert done.complete
    for comp in full.scores:
        torch.testing.assert_close(done.scores[comp], full.scores[comp], atol=2e-6, rtol=0)
    rc = cli.main(["trace", "--resume", "--samples", "5", "--model", str(tiny_dir[0]), "--out", str(tmp_path / "cut")])
    assert rc == 2 and "--samples 5 differs from the saved 2" in capsys.readouterr().err


def test_cli_positions_and_layers(tiny_dir, tmp_path):
    rc = _run(["trace", PROMPT, "--answer", "Paris", "--samples", "1", "--positions", "1,2,-1", "--layers", "0-1",
               "--components", "block_output", "--no-plot", "-q"], tiny_dir, tmp_path)
    assert rc == 0
    res = CausalTraceResult.from_json(tmp_path / "trace.json")
    assert res.positions == [1, 2, 8] and res.layers == [0, 1] and res.scores["block_output"].shape == (2, 3)


def test_token_roles_follow_rome():
    roles = token_roles(8, [1, 2, 3])
    assert [roles[i] for i in range(6)] == [[1], [2], [3], [4], [5, 6], [7]]


def test_average_over_a_file_of_prompts(tiny_dir, tmp_path, capsys):
    f = tmp_path / "prompts.tsv"
    f.write_text(f"{PROMPT}\tParis\tEiffel Tower\n"
                 + json.dumps({"prompt": "The Colosseum is located in the city of", "answer": "Rome"}) + "\n")
    rc = _run(["trace", "--prompts", str(f), "--samples", "1", "--window", "1", "--dpi", "30", "-q"], tiny_dir,
              tmp_path / "avg")
    assert rc == 0
    avg = AverageTraceResult.from_json(tmp_path / "avg" / "average.json")
    assert avg.n_prompts == 2 and avg.counts == [2, 0, 1, 2, 2, 2]  # "Colosseum" is one token
    assert (tmp_path / "avg" / "average.png").exists()
    assert "over 2 prompts" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::vene.analysis.causal_trace.TraceWarning")
def test_average_traces_by_hand(llama_lm):
    ids_a = tiny_models.ids(seq=5, seed=1)["input_ids"]
    ids_b = tiny_models.ids(seq=6, seed=2)["input_ids"]
    kw = dict(samples=1, noise=0.5, components=("block_output",), progress=False)
    a = causal_trace(llama_lm, None, ids_a, 3, subject=[0, 1], **kw)
    b = causal_trace(llama_lm, None, ids_b, 3, subject=[1, 2, 3], **kw)
    avg = average_traces([a, b])
    ga, gb, g = a.scores["block_output"], b.scores["block_output"], avg.scores["block_output"]
    torch.testing.assert_close(g[:, 0], (ga[:, 0] + gb[:, 1]) / 2)       # first subject token
    torch.testing.assert_close(g[:, 1], gb[:, 2])                        # middle: only b has one
    torch.testing.assert_close(g[:, 4], ga[:, 3])                        # further tokens: only a
    torch.testing.assert_close(g[:, 5], (ga[:, 4] + gb[:, 5]) / 2)       # last token
    assert avg.counts == [2, 1, 2, 2, 1, 2] and len(ROLES) == 6


def test_a_study_registers_with_one_line(monkeypatch):
    import types

    mod = types.ModuleType("fake_study_for_cli")
    seen = {}
    mod.add_parser = lambda sub: sub.add_parser("fake-study", help="a study").add_argument("--n", type=int, default=1,
                                                                                             help="n")
    mod.run = lambda args: seen.setdefault("args", args) and 7
    monkeypatch.setitem(sys.modules, "fake_study_for_cli", mod)
    monkeypatch.setattr(cli, "EXTERNAL_COMMANDS", ["fake_study_for_cli", "vene.studies.not_installed"])
    assert cli.main(["fake-study", "--n", "3", "-v"]) == 7
    assert seen["args"].n == 3 and seen["args"].verbose == 1


def test_patching_interrupt_keeps_the_finished_cells(llama_lm, monkeypatch):
    from vene.analysis import activation_patching, logit_diff

    a, b = tiny_models.ids(seq=5)["input_ids"], tiny_models.ids(seq=5, seed=9)["input_ids"]
    full = activation_patching(llama_lm, a, b, logit_diff(1, 2), progress=False)
    _StopAfter(monkeypatch, 3)
    with pytest.raises(SweepInterrupted) as e:
        activation_patching(llama_lm, a, b, logit_diff(1, 2), progress=False, memory_budget=1)
    part = e.value.result
    g = part.scores["block_output"]
    assert not part.complete and int((~torch.isnan(g)).sum()) == 2
    done = ~torch.isnan(g)
    torch.testing.assert_close(g[done], full.scores["block_output"][done], atol=2e-6, rtol=0)
    assert part.to_dict()["complete"] is False
