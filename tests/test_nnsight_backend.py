"""The nnsight backend (``vene.build_intervenable_model`` on an nnsight model; ``remote=`` for NDIF).

Every result is compared with vene's hook backend on the same model and, where the formula is
simple, with a hand-written hook. Models are tiny, built from configs here (not the shared
session fixtures: nnsight instruments the modules it wraps). The remote path is tested up to
the transport: nnsight's own client code builds and serializes the request, and the test's
stand-in for the network hands it to a fake NDIF server (a subprocess in which vene cannot be
imported) and returns that server's answer.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tiny_models as tm
import torch

import vene as pv

nnsight = pytest.importorskip("nnsight")

SERVER = Path(__file__).parent / "fixtures" / "fake_ndif_server.py"
D = 32


def _language_model(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnsight.NNsightDeprecationWarning)  # LanguageModel's own notice
        return nnsight.LanguageModel(module, tokenizer=tm.word_tokenizer())


@pytest.fixture(scope="module")
def gpt2_pair():
    """(plain module, nnsight LanguageModel around it)."""
    m = tm.gpt2(lm=True)
    return m, _language_model(m)


@pytest.fixture(scope="module")
def llama_pair():
    m = tm.llama()
    return m, _language_model(m)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, gpt2_pair, llama_pair):
    return gpt2_pair if request.param == "gpt2" else llama_pair


def _both(config_factory, pair, remote=False):
    """The hook backend and the nnsight backend on the same module, each with its own
    intervention objects (built by ``config_factory``, identically seeded)."""
    m, lm = pair
    torch.manual_seed(7)
    # the backends are compared bit for bit: the hook backend's base resumption (vene.resume)
    # computes fewer positions and rounds differently, so it is off here
    hook = pv.IntervenableModel(config_factory(), m, reuse_base=False)
    torch.manual_seed(7)
    nns = pv.build_intervenable_model(config_factory(), lm, remote=remote)
    assert isinstance(nns, pv.IntervenableNdifModel) and nns.remote == remote
    return hook, nns


# ---------------------------------------------------------------------------------------------
# the seed README's NDIF snippet


def test_seed_readme_ndif_snippet_collects_what_the_plain_model_computes():
    from nnsight import LanguageModel

    module = tm.gpt2(lm=True)
    # transformers 5's GPT-2 calls attn_dropout only on its eager reorder-and-upcast path (with
    # sdpa, or plain eager, the module never runs: HookNotFiredError, see below)
    module.set_attn_implementation("eager")
    for block in module.transformer.h:
        block.attn.reorder_and_upcast_attn = True
    tokenizer = tm.word_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnsight.NNsightDeprecationWarning)
        # the README: LanguageModel('openai-community/gpt2', device_map='cpu'); here a local tiny GPT-2
        gpt2_ndif = LanguageModel(module, tokenizer=tokenizer)

    # pyvene provides pv.build_intervenable_model as the generic model builder
    pv_gpt2_ndif = pv.build_intervenable_model({
        "component": "transformer.h[2].attn.attn_dropout.input",  # h[10] in the README's 12-layer GPT-2
        "intervention": pv.CollectIntervention()}, model=gpt2_ndif, remote=False)

    prompt = tokenizer("w5 w9 w13 w2 w40", return_tensors="pt")
    (_, collected), out = pv_gpt2_ndif(prompt)
    want = tm.capture(module, module.transformer.h[2].attn.attn_dropout, dict(prompt), pre=True)
    assert len(collected) == 1
    assert torch.equal(collected[0], want)  # (batch, heads, query, key) attention probabilities
    torch.testing.assert_close(want.sum(-1), torch.ones(1, 4, 5))
    assert torch.equal(out.logits, module(**prompt).logits)  # collecting changes nothing


# ---------------------------------------------------------------------------------------------
# same results as the hook backend


def test_interchange_equals_hook_backend_and_hand_hook(pair):
    m, _ = pair
    hook, nns = _both(lambda: {"layer": 1, "component": "block_output"}, pair)
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    ul = {"sources->base": ([[[1, 2], [0, 4]]], [[[3, 4], [5, 1]]])}  # one intervention: [example][unit]
    _, want = hook(base, [src], ul)
    _, got = nns(base, [src], ul)
    assert torch.equal(got.logits, want.logits)
    # by hand: the source's block-1 output at (1,2)/(0,4) written into the base at (3,4)/(5,1)
    layers = m.transformer.h if hasattr(m, "transformer") else m.model.layers
    s = tm.capture(m, layers[1], src)

    def patch(t):
        t = t.clone()
        t[0, [3, 4]] = s[0, [1, 2]]
        t[1, [5, 1]] = s[1, [0, 4]]
        return t

    with tm.hooked(layers[1], patch):
        hand = m(**base).logits
    assert torch.equal(got.logits, hand)
    assert not torch.equal(got.logits, m(**base).logits)


def test_collect_and_addition_in_one_call(pair):
    def cfg():
        return [
            {"layer": 0, "component": "mlp_output", "intervention": pv.CollectIntervention()},
            {"layer": 1, "component": "attention_output", "intervention_type": pv.AdditionIntervention},
        ]

    hook, nns = _both(cfg, pair)
    base = tm.ids(2, 5, 3)
    reps = [None, torch.randn(2, 1, D, generator=torch.Generator().manual_seed(0))]
    ul = {"base": [[[1], [3]], [[2], [2]]]}
    (_, want_c), want = hook(base, unit_locations=ul, source_representations=reps)
    (orig, got_c), got = nns(base, unit_locations=ul, source_representations=reps, output_original_output=True)
    assert torch.equal(got.logits, want.logits)
    assert len(got_c) == len(want_c) == 1 and torch.equal(got_c[0], want_c[0])
    assert got_c[0].shape == (2, 1, D)
    assert torch.equal(orig.logits, pair[0](**base).logits)


def test_serial_mode_and_groups_match_hook_backend(gpt2_pair):
    def cfg():
        return pv.IntervenableConfig(
            [{"layer": 0, "component": "block_output"}, {"layer": 2, "component": "block_output"}], mode="serial")

    hook, nns = _both(cfg, gpt2_pair)
    base, s1, s2 = tm.ids(1, 6, 1), tm.ids(1, 6, 2), tm.ids(1, 6, 3)
    ul = {"source_0->source_1": [[[1]], [[2]]], "source_1->base": [[[2]], [[4]]]}
    _, want = hook(base, [s1, s2], ul)
    _, got = nns(base, [s1, s2], ul)
    assert torch.equal(got.logits, want.logits)


def test_head_units_and_subspaces_match(gpt2_pair):
    def cfg():
        return {"layer": 1, "component": "head_attention_value_output", "unit": "h.pos",
                "intervention_type": pv.VanillaIntervention}

    hook, nns = _both(cfg, gpt2_pair)
    base, src = tm.ids(2, 6, 4), tm.ids(2, 6, 5)
    src_loc = [[[[0, 2], [1, 3]], [[1], [4]]]]  # per intervention: [heads per example, positions per example]
    base_loc = [[[[0, 2], [1, 3]], [[3], [2]]]]
    subspaces = [[[0, 1, 2], [5]]]  # per intervention, per example: feature dims within a head
    _, want = hook(base, [src], {"sources->base": (src_loc, base_loc)}, subspaces=subspaces)
    _, got = nns(base, [src], {"sources->base": (src_loc, base_loc)}, subspaces=subspaces)
    assert not torch.equal(got.logits, hook(base, [src], {"sources->base": (src_loc, base_loc)}, subspaces=[[[7], [7]]])[1].logits)
    assert torch.equal(got.logits, want.logits)


def test_trained_das_intervention_trains_the_same(pair):
    def cfg():
        return {"layer": 1, "component": "block_output",
                "intervention": pv.LowRankRotatedSpaceIntervention(embed_dim=D, low_rank_dimension=2)}

    hook, nns = _both(cfg, pair)
    base, src = tm.ids(4, 5, 6), tm.ids(4, 5, 7)
    target = torch.randint(0, tm.VOCAB, (4,), generator=torch.Generator().manual_seed(3))
    ul = {"sources->base": 4}
    losses = {}
    for name, pvm in (("hook", hook), ("nnsight", nns)):
        opt = torch.optim.Adam(pvm.get_trainable_parameters(), lr=0.05)
        losses[name] = []
        for _ in range(3):
            _, out = pvm(base, [src], ul)
            loss = torch.nn.functional.cross_entropy(out.logits[:, -1], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["hook"] == pytest.approx(losses["nnsight"], rel=1e-5)
    assert losses["nnsight"][-1] < losses["nnsight"][0]  # it did learn
    for (k, a), (_, b) in zip(hook.interventions.items(), nns.interventions.items()):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb)
    # the trained intervention gives the same outputs through either backend
    with torch.no_grad():
        assert torch.allclose(hook(base, [src], ul)[1].logits, nns(base, [src], ul)[1].logits, atol=1e-6)


def test_generation_with_steering_matches_hook_backend(pair):
    m, _ = pair

    def cfg():
        return {"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention}

    hook, nns = _both(cfg, pair)
    base = tm.ids(2, 5, 8)
    steer = torch.randn(2, 1, D, generator=torch.Generator().manual_seed(1)) * 4
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    want = hook.generate(base, source_representations=steer, unit_locations={"base": -1}, timesteps="all",
                         output_original_output=True, **kw)
    got = nns.generate(base, source_representations=steer, unit_locations={"base": -1}, timesteps="all",
                       output_original_output=True, **kw)
    assert torch.equal(got[1], want[1])
    plain = m.generate(**base, **kw)
    assert torch.equal(got[0], plain)
    assert not torch.equal(got[1], plain)  # the steering changed what was generated


def test_generation_collects_every_step(gpt2_pair):
    hook, nns = _both(lambda: {"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention()},
                      gpt2_pair)
    base = tm.ids(1, 4, 9)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    want = hook.generate(base, timesteps="all", return_dict=True, **kw)
    got = nns.generate(base, timesteps="all", return_dict=True, **kw)
    assert got.collected_steps == want.collected_steps == [0, 1, 2]
    assert [t.shape for t in got.collected_activations] == [(1, 4, D), (1, 1, D), (1, 1, D)]
    assert all(torch.equal(a, b) for a, b in zip(got.collected_activations, want.collected_activations))
    assert torch.equal(got.intervened_outputs, want.intervened_outputs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_reach_the_model_as_given(side):
    """nnsight's own input handling re-pads batches and adds position_ids for left padding; the
    backend hands the model exactly the dict it was given, as the hook backend does."""
    m = tm.gpt2(lm=True)
    tok = tm.word_tokenizer()
    tok.padding_side = side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnsight.NNsightDeprecationWarning)
        lm = nnsight.LanguageModel(m, tokenizer=tok)
    base = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]]),
            "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    cfg = {"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention()}
    (_, want_c), want = pv.IntervenableModel(cfg, m)(base)
    (_, got_c), got = pv.build_intervenable_model(cfg, lm)(base)
    assert torch.equal(got_c[0], want_c[0]) and torch.equal(got.logits, want.logits)
    assert torch.equal(got.logits, m(**base).logits)
    kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert torch.equal(pv.build_intervenable_model(cfg, lm).generate(base, timesteps="all", **kw)[1],
                       m.generate(**base, **kw))


def test_plain_nnsight_wrapper_works_too(gpt2_pair):
    m, _ = gpt2_pair
    wrapped = nnsight.NNsight(m)
    nns = pv.build_intervenable_model({"layer": 0, "component": "block_output"}, wrapped)
    hook = pv.IntervenableModel({"layer": 0, "component": "block_output"}, m)
    base, src = tm.ids(1, 5, 1), tm.ids(1, 5, 2)
    assert torch.equal(nns(base, [src], {"sources->base": 3})[1].logits, hook(base, [src], {"sources->base": 3})[1].logits)


# ---------------------------------------------------------------------------------------------
# errors: the same as the hook backend's, or saying what the nnsight backend cannot do


def test_module_that_never_runs_raises_like_hook_backend(gpt2_pair):
    m, lm = gpt2_pair  # sdpa attention: attn_dropout is never called
    cfg = {"component": "transformer.h[0].attn.attn_dropout.input", "intervention": pv.CollectIntervention()}
    with pytest.raises(pv.HookNotFiredError, match="attn_dropout"):
        pv.IntervenableModel(cfg, m)(tm.ids(1, 4))
    with pytest.raises(pv.HookNotFiredError, match="attn_dropout"):
        pv.build_intervenable_model(cfg, lm)(tm.ids(1, 4))


def test_a_failing_call_raises_vene_errors_and_leaves_the_model_as_it_was(gpt2_pair):
    m, lm = gpt2_pair
    base, src = tm.ids(1, 5, 1), tm.ids(1, 5, 2)
    before = m(**base).logits

    def wrong_width(b, s):
        return b[..., :3]

    bad = pv.build_intervenable_model({"layer": 1, "component": "block_output", "intervention": wrong_width}, lm)
    with pytest.raises(pv.ShapeMismatchError, match=r"returned shape \(1, 1, 3\)"):
        bad(base, unit_locations={"base": 2})
    good = pv.build_intervenable_model({"layer": 1, "component": "block_output"}, lm)
    with pytest.raises(pv.LocationError, match="source location 9 is out of range"):  # found at the site
        good(base, [src], {"sources->base": 9})
    assert torch.equal(m(**base).logits, before)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    hook = pv.IntervenableModel({"layer": 1, "component": "block_output"}, m)
    assert torch.equal(good(base, [src], {"sources->base": 2})[1].logits, hook(base, [src], {"sources->base": 2})[1].logits)


def test_what_the_nnsight_backend_cannot_do_is_named(gpt2_pair):
    m, lm = gpt2_pair
    fresh = tm.gpt2(lm=True)
    fresh.train()
    for p in fresh.parameters():
        p.requires_grad_(True)
    with pytest.raises(pv.ConfigError, match="attention_weight.*probe attention.*IntervenableModel"):
        pv.build_intervenable_model({"layer": 0, "component": "attention_weight"}, nnsight.NNsight(fresh))
    assert fresh.training and all(p.requires_grad for p in fresh.parameters())  # left as it was
    with pytest.raises(pv.ConfigError, match="batch_sources=True.*separate passes"):
        pv.build_intervenable_model({"layer": 0, "component": "block_output"}, lm, batch_sources=True)
    with pytest.raises(pv.ConfigError, match="needs an nnsight model that NDIF can name"):
        pv.build_intervenable_model({"layer": 0, "component": "block_output"}, nnsight.NNsight(m), remote=True)
    with pytest.raises(pv.ConfigError, match="remote must be"):
        pv.build_intervenable_model({"layer": 0, "component": "block_output"}, lm, remote="yes")
    with pytest.raises(pv.ConfigError, match="needs an nnsight model.*LanguageModel"):
        pv.build_intervenable_model({"layer": 0, "component": "block_output"}, m, remote=True)
    with pytest.raises(pv.ConfigError, match="wraps an nnsight model"):
        pv.IntervenableNdifModel({"layer": 0, "component": "block_output"}, m)
    assert isinstance(pv.build_intervenable_model({"layer": 0, "component": "block_output"}, m), pv.IntervenableModel)


def test_without_nnsight_wrapping_says_how_to_install(monkeypatch, gpt2_pair):
    _, lm = gpt2_pair
    monkeypatch.setitem(sys.modules, "nnsight", None)  # `import nnsight` now raises ImportError
    with pytest.raises(pv.ConfigError, match=r"pip install 'vene\[nnsight\]'"):
        pv.build_intervenable_model({"layer": 0, "component": "block_output"}, lm)


def test_import_vene_works_without_nnsight():
    code = (
        "import sys; sys.modules['nnsight'] = None\n"
        "import vene as pv\n"
        "assert pv.IntervenableNdifModel and pv.build_intervenable_model\n"
        "import tiny_models as tm\n"
        "pvm = pv.build_intervenable_model({'layer': 0, 'component': 'block_output'}, tm.gpt2())\n"
        "assert type(pvm) is pv.IntervenableModel\n"
        "assert sys.modules['nnsight'] is None\n"
    )
    env_path = [str(Path(__file__).parent), str(Path(pv.__file__).parent.parent)]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                       env={**_env(), "PYTHONPATH": ":".join(env_path)})
    assert r.returncode == 0, r.stderr


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ---------------------------------------------------------------------------------------------
# remote=True: nnsight's request, up to the transport


class _FakeSocket:
    """Stands in for NDIF's /subscribe websocket: the session id, then what the server said."""

    def __init__(self) -> None:
        self.messages: list = [json.dumps({"session_id": "test-session"})]

    def recv(self):
        return self.messages.pop(0)

    def settimeout(self, t):
        pass

    def close(self):
        pass


@pytest.fixture
def fake_ndif(monkeypatch, tmp_path):
    """Replace nnsight's sending step: the request goes to a fake NDIF server (a subprocess
    without vene) instead of the network; returns what was sent."""
    import nnsight.modeling.huggingface as hf
    import websocket
    from nnsight.intervention.backends import remote as remote_backend
    from nnsight.schema.response import ResponseModel, Status

    sent: dict = {"requests": []}

    def connect(*args, **kwargs):
        sent["socket"] = _FakeSocket()
        return sent["socket"]

    def post(self, request, blob):
        sent["request"], sent["blob"], sent["api_key"] = request, blob, self.api_key
        sent["requests"].append(request)
        (tmp_path / "request").write_bytes(blob)
        r = subprocess.run(
            [sys.executable, str(SERVER), str(tmp_path / "request"), str(tmp_path / "result"), sent["model"],
             "1" if request.compress else "0"],
            capture_output=True, text=True, timeout=300, env=_env(), check=False,
        )
        assert r.returncode == 0, r.stderr
        data = (tmp_path / "result").read_bytes()
        sent["socket"].messages.append(ResponseModel(id="job-1", status=Status.COMPLETED, data=data).pickle())
        return ResponseModel(id="job-1", status=Status.RECEIVED)

    monkeypatch.setattr(remote_backend.RemoteBackend, "_post", post)
    monkeypatch.setattr(websocket, "create_connection", connect)
    monkeypatch.setitem(hf._ID_CACHE, "openai-community/gpt2", "openai-community/gpt2")  # no Hub lookup
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "test-api-key")  # as from NDIF_API_KEY / nnsight.login()
    return sent


def test_remote_request_is_built_and_runs_where_vene_is_not_installed(fake_ndif, gpt2_pair, tmp_path):
    m, _ = gpt2_pair
    # as LanguageModel('openai-community/gpt2') on a laptop: a meta model (no weights) built from the
    # checkpoint's config; here the tiny GPT-2's config and tokenizer, saved to a folder
    m.config.save_pretrained(tmp_path / "tiny")
    tm.word_tokenizer().save_pretrained(tmp_path / "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnsight.NNsightDeprecationWarning)
        lm = nnsight.LanguageModel(str(tmp_path / "tiny"), tokenizer=tm.word_tokenizer())
    assert next(lm._module.parameters()).is_meta
    lm.repo_id = "openai-community/gpt2"  # the Hub id NDIF knows the deployment by
    fake_ndif["model"] = "gpt2"

    def cfg():
        return [{"layer": 1, "component": "block_output",
                 "intervention": pv.LowRankRotatedSpaceIntervention(embed_dim=D, low_rank_dimension=2)},
                {"layer": 0, "component": "mlp_output", "intervention": pv.CollectIntervention()}]

    hook, remote = _both(cfg, (m, lm), remote=True)
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    ul = {"sources->base": ([[[1, 2]] * 2, None], [[[3, 4]] * 2, [[0]] * 2])}
    with torch.no_grad():
        (_, want_c), want = hook(base, [src, None], ul)
        (_, got_c), got = remote(base, [src, None], ul)

    request = fake_ndif["request"]
    assert request.model_key == (
        'nnsight.modeling.transformers.TransformersModel:{"repo_id": "openai-community/gpt2", '
        '"revision": null, "task": "text-generation"}'
    )
    assert request.session_id == "test-session"
    assert fake_ndif["api_key"] == "test-api-key"  # sent as the ndif-api-key header
    blob = fake_ndif["blob"]
    if request.compress:
        import zstandard

        blob = zstandard.ZstdDecompressor().decompress(blob)
    assert b"SiteServer" in blob and b"LowRankRotatedSpaceIntervention" in blob  # vene's code travels by value
    assert b"wte.weight" not in blob and len(blob) < 2_000_000  # the model does not
    # the server's answer is the local answer
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-6)  # the rotation, materialised
    assert len(got_c) == 1 and torch.equal(got_c[0], want_c[0])
    assert not torch.equal(got.logits, m(**base).logits)
    # generation with steering, and a collect at every step: one more request
    def gen_cfg():
        return [{"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention},
                {"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention()}]

    local, steer = _both(gen_cfg, (m, lm), remote=True)
    vec = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(2)) * 4
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, source_representations=[vec, None],
              unit_locations={"base": -1}, timesteps="all", return_dict=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "never acted": the server's counts come back
        got_g = steer.generate(tm.ids(1, 4, 3), **kw)
        want_g = local.generate(tm.ids(1, 4, 3), **kw)
    assert torch.equal(got_g.intervened_outputs, want_g.intervened_outputs)
    assert got_g.collected_steps == want_g.collected_steps == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(got_g.collected_activations, want_g.collected_activations))
    assert len(fake_ndif["requests"]) == 2
    assert next(lm._module.parameters()).is_meta  # nothing was loaded here
    # and vene's registration for the request was undone
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    assert "vene" not in _PICKLE_BY_VALUE_MODULES


def test_remote_local_simulation(gpt2_pair):
    """nnsight's remote='local': serialize, deserialize with local modules hidden, run here."""
    m, lm = gpt2_pair
    lm.repo_id = "openai-community/gpt2"
    hook, nns = _both(lambda: {"layer": 2, "component": "mlp_input", "intervention_type": pv.ZeroIntervention}, (m, lm),
                      remote="local")
    base = tm.ids(1, 5, 2)
    with torch.no_grad():
        assert torch.equal(nns(base, unit_locations={"base": 2})[1].logits, hook(base, unit_locations={"base": 2})[1].logits)


def test_remote_training_warns_that_no_gradient_comes_back(gpt2_pair):
    _, lm = gpt2_pair
    nns = pv.build_intervenable_model(
        {"layer": 1, "component": "block_output",
         "intervention": pv.LowRankRotatedSpaceIntervention(embed_dim=D, low_rank_dimension=2)}, lm, remote="local")
    with pytest.warns(UserWarning, match="without autograd history"):
        nns(tm.ids(1, 4, 1), [tm.ids(1, 4, 2)], {"sources->base": 1})
