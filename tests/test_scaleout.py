"""Beyond one small model: placement on device_map / offloaded models, half precision,
gradient checkpointing, distributed training (DDP, accelerate, the HF Trainer).

Everything runs on CPU. accelerate's cpu + disk offload and meta-device init exercise the same
hooks and ``execution_device`` logic as a multi-GPU ``device_map``; a real second device is not
available here, so the cross-device copy at a site is checked by making the intervention report
another device (``cpu:0`` vs ``cpu``), and docs/scale-out.md says what was verified where.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F

import vene as pv
from vene.placement import site_device, site_dtype

accelerate = pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
BASE, SRC = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
LOCS = {"sources->base": ([[[2], [4]]], [[[3], [1]]])}


def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _das(model, seed=3, low_rank=True, **kw):
    """A DAS rotation swapping 8 of 32 rotated dimensions of layer 1's output (a full swap would
    not depend on the rotation) and a rank-2 rotation on layer 1's MLP output."""
    torch.manual_seed(seed)
    cfg = [{"layer": 1, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}]
    if low_rank:
        cfg.append({"layer": 1, "component": "mlp_output", "intervention_type": pv.LowRankRotatedSpaceIntervention,
                    "low_rank_dimension": 2})
    pm = pv.IntervenableModel(cfg, model, **kw)
    pm.interventions[pm.sorted_keys[0]].set_interchange_dim(8)
    return pm


def _loss(out):
    """A loss that reads every position (so both interventions get a gradient)."""
    return out.logits.float().log_softmax(-1)[..., 3].mean()


def _locs2():
    return {"sources->base": ([[[2], [4]], [[1], [5]]], [[[3], [1]], [[2], [0]]])}


# ---------------------------------------------------------------------------------------------
# device_map / offloading (accelerate cpu + disk offload, meta-device init)

DEVICE_MAP = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "cpu", "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    tm.llama(n_layer=3).save_pretrained(d)
    return d


@pytest.fixture(params=["dispatch_model", "meta_init"])
def offloaded(request, checkpoint, tmp_path):
    """The tiny Llama with layer 1, the embeddings and the final norm offloaded to disk."""
    if request.param == "dispatch_model":
        model = accelerate.dispatch_model(tm.llama(n_layer=3), DEVICE_MAP, main_device="cpu",
                                          offload_dir=str(tmp_path / "offload"))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        with accelerate.init_empty_weights():
            model = LlamaForCausalLM(LlamaConfig.from_pretrained(checkpoint))
        assert next(model.parameters()).device.type == "meta"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some parameters are on the meta device" (by design)
            model = accelerate.load_checkpoint_and_dispatch(model, str(checkpoint), device_map=DEVICE_MAP,
                                                            offload_folder=str(tmp_path / "offload"))
        model.eval()
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # really offloaded
    return model


def test_offloaded_model_forward_fused_and_separate_equal_the_plain_model(offloaded):
    plain = tm.llama(n_layer=3)
    hooks_before = _hook_counts(offloaded)
    for fuse in (True, False):
        ref = _das(plain, batch_sources=fuse)
        got = _das(offloaded, batch_sources=fuse)
        # the interventions sit on the site's execution device, in its dtype
        assert set(pv.placement_report(got).values()) == {("cpu", "float32")}
        _, want = ref(BASE, [SRC, SRC], _locs2())
        _, out = got(BASE, [SRC, SRC], _locs2())
        torch.testing.assert_close(out.logits, want.logits, atol=1e-5, rtol=0)
        assert not torch.allclose(want.logits, plain(**BASE).logits, atol=1e-3)  # the swap did something
    # accelerate's hooks are intact, ours are gone, and the model still computes as before
    assert hooks_before == _hook_counts(offloaded)
    assert hasattr(offloaded.model.layers[1].mlp.up_proj, "_hf_hook")
    torch.testing.assert_close(offloaded(**BASE).logits, plain(**BASE).logits, atol=1e-5, rtol=0)


def test_offloaded_model_generate_sweep_and_training_equal_the_plain_model(offloaded):
    plain = tm.llama(n_layer=3)
    # generate (a constant-source addition at the last prompt position of layer 1)
    vec = torch.linspace(-1, 1, 32)
    outs = []
    for m in (plain, offloaded):
        g = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention,
                                  "source_representation": vec}, m)
        _, seq = g.generate(BASE, unit_locations={"base": 5}, intervene_on_prompt=True, max_new_tokens=3,
                            do_sample=False)
        outs.append(seq)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    # a patching sweep
    from vene.analysis import activation_patching, logit_diff

    res = [activation_patching(m, BASE["input_ids"], SRC["input_ids"], logit_diff(3, 9), layers=[0, 1, 2],
                               progress=False).scores["block_output"] for m in (plain, offloaded)]
    torch.testing.assert_close(res[1], res[0], atol=1e-5, rtol=0)
    # training: the same gradients on the rotation, and equal weights after a few steps
    weights = []
    for m in (plain, offloaded):
        pm = _das(m)
        opt = torch.optim.SGD(pm.get_trainable_parameters(), lr=0.5)
        for _ in range(3):
            _, out = pm(BASE, [SRC, SRC], _locs2())
            loss = _loss(out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights.append([p.detach().clone() for p in pm.get_trainable_parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_noise_scale_reads_offloaded_embedding_weights(offloaded):
    # NoiseIntervention's default level is a multiple of the input embeddings' std; here they are on disk
    plain = tm.llama(n_layer=3)

    def std(m):
        pm = pv.IntervenableModel({"layer": 0, "component": "block_input", "intervention_type": pv.NoiseIntervention}, m)
        return next(iter(pm.interventions.values())).embedding_std

    assert offloaded.model.embed_tokens.weight.device.type == "meta"
    assert std(offloaded) == pytest.approx(float(plain.model.embed_tokens.weight.std()), rel=1e-6)


def test_site_device_follows_accelerate_execution_devices_and_meta_models_warn(checkpoint):
    from transformers import LlamaConfig, LlamaForCausalLM

    with accelerate.init_empty_weights():
        model = LlamaForCausalLM(LlamaConfig.from_pretrained(checkpoint))
    # an accelerate-style hook on layer 1 that runs it on "cpu" while its weights stay on meta
    model.model.layers[1].__dict__["_hf_hook"] = types.SimpleNamespace(execution_device="cpu")
    assert site_device(model, "model.layers.1.mlp") == torch.device("cpu")  # from the ancestor's hook
    assert site_device(model, "model.layers.1") == torch.device("cpu")
    assert site_device(model, "model.layers.0.mlp").type == "meta"  # not loaded, nothing says where
    assert site_dtype(model, "model.layers.1.mlp.act_fn") == torch.float32  # from the nearest ancestor
    # a hooked submodule tells a hook-less parent's device; a SequentialHook's inner hooks count
    model.model.layers[0].mlp.up_proj.__dict__["_hf_hook"] = types.SimpleNamespace(
        hooks=[types.SimpleNamespace(execution_device=None), types.SimpleNamespace(execution_device="cpu")])
    assert site_device(model, "model.layers.0.mlp") == torch.device("cpu")
    with pytest.warns(UserWarning, match="meta device"):
        pv.IntervenableModel({"layer": 2, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}, model)


def test_values_cross_devices_at_the_site_with_one_warning(monkeypatch):
    """An intervention whose weights are on another device than its site's activations (an input
    site on the next GPU, a model moved after wrapping): base and source go to the intervention,
    the result comes back, once-per-pair warning. Only one device exists here, so the intervention
    reports ``cpu:0`` (a different torch.device that tensors can move to)."""
    from vene import ops

    model = tm.llama(n_layer=3)
    ref = _das(model)
    _, want = ref(BASE, [SRC, SRC], _locs2())
    moved = []
    real = ops.intervention_device

    def elsewhere(iv):
        dev = real(iv)
        return None if dev is None else torch.device("cpu", 0)

    monkeypatch.setattr(ops, "intervention_device", elsewhere)
    orig_to = torch.Tensor.to

    def spy(self, *a, **k):
        if a and a[0] == torch.device("cpu", 0):
            moved.append(tuple(self.shape))
        return orig_to(self, *a, **k)

    got = _das(model)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    with pytest.warns(UserWarning, match="weights are on cpu:0 but the activations .* are on cpu"):
        _, out = got(BASE, [SRC, SRC], _locs2())
    monkeypatch.setattr(torch.Tensor, "to", orig_to)
    torch.testing.assert_close(out.logits, want.logits, atol=1e-6, rtol=0)
    assert len(moved) >= 4  # base and source of both interventions went to the intervention's device
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per intervention and device pair
        got(BASE, [SRC, SRC], _locs2())


def test_source_representations_move_to_the_site_device():
    # a constant source on another device (here: a tensor given as cpu:0) is moved where it is written
    model = tm.llama(n_layer=3)
    pm = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model)
    rep = torch.randn(2, 1, 32)
    _, a = pm(BASE, unit_locations={"base": 2}, source_representations=rep)
    _, b = pm(BASE, unit_locations={"base": 2}, source_representations=rep.to(torch.device("cpu", 0)))
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# half precision


def _dtypes(pm):
    return {type(iv).__name__: {n: str(t.dtype).replace("torch.", "") for n, t in
                                [*iv.named_parameters(), *iv.named_buffers()] if t.is_floating_point()}
            for iv in pm.interventions.values()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_interventions_follow_the_model_dtype_rotations_stay_fp32_or_intervention_dtype(dtype):
    model = tm.llama(n_layer=3).to(dtype)
    half = str(dtype).replace("torch.", "")
    cfg = [{"layer": 0, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention},
           {"layer": 1, "component": "block_output", "intervention_type": pv.BoundlessRotatedSpaceIntervention},
           {"layer": 1, "component": "mlp_output", "intervention_type": pv.SigmoidMaskIntervention},
           {"layer": 2, "component": "mlp_output", "intervention_type": pv.LoRAIntervention, "low_rank_dimension": 2}]
    rot = "rotate_layer.parametrizations.weight.original"
    got = _dtypes(pv.IntervenableModel(cfg, model))
    assert got["RotatedSpaceIntervention"][rot] == "float32"  # orthogonal rotations keep fp32 by default
    assert got["BoundlessRotatedSpaceIntervention"] == {
        rot: "float32", "rotate_layer.parametrizations.weight.0.base": "float32",
        "intervention_boundaries": half, "temperature": half,
        "intervention_population": "float32"}  # exact positions 0..n-1 (bf16 cannot hold 257)
    assert set(got["SigmoidMaskIntervention"].values()) == {half}
    assert set(got["LoRAIntervention"].values()) == {half}
    forced = _dtypes(pv.IntervenableModel(cfg, model, intervention_dtype=dtype))
    assert forced["RotatedSpaceIntervention"][rot] == half
    assert forced["BoundlessRotatedSpaceIntervention"]["intervention_population"] == "float32"
    assert {v for d in _dtypes(pv.IntervenableModel(cfg, model, intervention_dtype=torch.float32)).values()
            for v in d.values()} == {"float32"}
    for bad in ("bf16", torch.int64):
        with pytest.raises(pv.ConfigError, match="intervention_dtype must be None"):
            pv.IntervenableModel(cfg, model, intervention_dtype=bad)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.01), (torch.float16, 0.002)])
def test_half_precision_das_matches_fp32_within_tolerance(dtype, tol):
    """Stated tolerances (docs/scale-out.md): logits within ``tol`` (max abs; here |logits| <= 0.4)
    of the fp32 run, and the interventions' gradient within cosine 0.999 of fp32's: by default
    (rotations in fp32, cast at the site) and with the full rotation in the model's dtype."""
    half = tm.llama(n_layer=3).to(dtype)
    # the Householder parametrisation of the low-rank rotation has no half-precision kernel on CPU
    for low_rank, kw in ((True, {}), (False, {}), (False, {"intervention_dtype": dtype})):
        ref = _das(tm.llama(n_layer=3), low_rank=low_rank)
        locs = _locs2() if low_rank else LOCS
        srcs = [SRC, SRC] if low_rank else [SRC]
        _, want = ref(BASE, srcs, locs)
        _loss(want).backward()
        g_ref = torch.cat([p.grad.flatten() for p in ref.get_trainable_parameters()])
        pm = _das(half, low_rank=low_rank, **kw)
        _, out = pm(BASE, srcs, locs)
        assert out.logits.dtype == dtype
        err = (out.logits.float() - want.logits).abs().max().item()
        assert err < tol, (kw, err)
        _loss(out).backward()
        g = torch.cat([p.grad.float().flatten() for p in pm.get_trainable_parameters()])
        assert F.cosine_similarity(g, g_ref, dim=0) > 0.999, kw


# ---------------------------------------------------------------------------------------------
# gradient checkpointing


def _gc_run(gc, reentrant, fuse, model_grads):
    model = tm.llama(n_layer=3)
    torch.manual_seed(3)
    cfg = [{"layer": 1, "component": "mlp_output", "intervention_type": pv.RotatedSpaceIntervention},  # inside the checkpoint
           {"layer": 2, "component": "attention_value_output",  # an input site inside it
            "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 2},
           {"layer": 0, "component": "block_output",  # the layer's own hook (outside the checkpoint)
            "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 3},
           {"layer": 1, "component": "attention_weight", "intervention": lambda b, s: b * b}]  # probe attention
    pm = pv.IntervenableModel(cfg, model, batch_sources=fuse)
    pm.interventions[pm.sorted_keys[0]].set_interchange_dim(8)  # a full swap would not depend on the rotation
    if model_grads:
        pm.enable_model_gradients()
    if gc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # renamed in transformers 5
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        assert model.model.layers[1].gradient_checkpointing
    hooks = _hook_counts(model)  # transformers adds an input-grad hook of its own
    funcs = [m.__dict__.get("_gradient_checkpointing_func") for m in model.modules()]
    model.train()
    locs = {"sources->base": ([[[2]] * 2, [[1]] * 2, [[3]] * 2, None], [[[2]] * 2, [[4]] * 2, [[3]] * 2, [[0]] * 2])}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, out = pm(BASE, [SRC, SRC, SRC, None], locs)
        _loss(out).backward()
    grads = [p.grad.clone() for p in pm.get_trainable_parameters()]
    # the checkpoint functions vene swapped in for the call are the user's again
    assert funcs == [m.__dict__.get("_gradient_checkpointing_func") for m in model.modules()]
    return out.logits.detach(), grads, hooks, _hook_counts(model), caught


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_values_and_gradients(fuse, reentrant):
    """Interventions inside checkpointed layers (an output site, an input site, probe attention)
    and on a layer's own output: the same values and gradients with and without checkpointing,
    for the interventions and, after enable_model_gradients(), for the model."""
    n_model = len(list(tm.llama(n_layer=3).parameters()))
    for model_grads in (False, True):
        want, g_want, _, _, _ = _gc_run(False, reentrant, fuse, model_grads)
        got, g_got, hooks, hooks_after, caught = _gc_run(True, reentrant, fuse, model_grads)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        assert len(g_got) == len(g_want) == 3 + (n_model if model_grads else 0)
        assert all(g.norm() > 1e-4 for g in g_got[:3])  # every trainable intervention gets a real gradient
        # reentrant checkpointing records no graph for a source activation that leaves a
        # checkpointed layer, so with separate source runs the model's gradient through them is
        # dropped (the interventions' own gradients stay exact): vene warns
        dropped = reentrant and model_grads and not fuse
        for a, b in zip(g_got if not dropped else g_got[:3], g_want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        if dropped:
            assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(g_got[3:], g_want[3:]))
        warned = [w for w in caught if "Reentrant gradient checkpointing" in str(w.message)]
        assert bool(warned) == (reentrant and model_grads)
        assert hooks_after == hooks  # ours are gone


# ---------------------------------------------------------------------------------------------
# distributed training: DDP (2 gloo processes), accelerate, the HF Trainer


def _example():
    spec = importlib.util.spec_from_file_location("das_distributed", ROOT / "examples" / "das_distributed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _weights(result):
    return result["weights"]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, engine):
    """torch DDP on the IntervenableModel, and FSDP2 (fully_shard of the whole IntervenableModel),
    2 gloo processes on CPU: the trained rotation and the losses equal one process on the global batch."""
    ex = _example()
    single = ex.train(ex.parse(["--tiny", "--cpu", "--steps", "3", "--global-batch", "4"]))
    out = tmp_path / f"{engine}.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "examples" / "das_distributed.py"), "--tiny", "--cpu", "--steps", "3", "--global-batch", "4",
         "--engine", engine, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(str(out))
    assert json.loads(out.with_suffix(".json").read_text())["world_size"] == 2
    assert set(got) == set(_weights(single))
    for k, v in _weights(single).items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)
    # the rotation really trained
    init = _example().make_intervenable(_example().build_model(True, torch.device("cpu")), 1, 0)
    trained_key = next(k for k in got if k.endswith("original"))
    assert not torch.allclose(got[trained_key], init.interventions.state_dict()[trained_key])
    torch.testing.assert_close(torch.tensor(json.loads(out.with_suffix(".json").read_text())["losses"]),
                               torch.tensor(single["losses"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ["trainer", "accelerate"])
def test_trainer_and_accelerate_train_like_a_plain_loop(engine):
    ex = _example()
    plain = ex.train(ex.parse(["--tiny", "--cpu", "--steps", "3", "--global-batch", "4", "--repeat-batch"]))
    got = ex.train(ex.parse(["--tiny", "--cpu", "--steps", "3", "--global-batch", "4", "--repeat-batch", "--engine", engine]))
    for k, v in _weights(plain).items():
        torch.testing.assert_close(got["weights"][k], v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(plain["losses"]), atol=1e-3, rtol=0)


def test_training_module_contract_and_modes():
    model = tm.llama(n_layer=3)
    pm = _das(model)
    mod = pv.TrainingModule(pm)
    labels = BASE["input_ids"]
    res = mod(BASE, [SRC, SRC], _locs2(), labels=labels)
    _, out = pm(BASE, [SRC, SRC], _locs2())
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, tm.VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(res["loss"], want, atol=1e-5, rtol=0)  # the model's own loss on the intervened run
    torch.testing.assert_close(res["logits"], out.logits, atol=1e-6, rtol=0)
    mod.train()
    assert not model.training and all(iv.training for iv in pm.interventions.values())  # the frozen model stays in eval
    pm.enable_model_gradients()
    mod.train()
    assert model.training
    mod.eval()
    assert not model.training and not any(iv.training for iv in pm.interventions.values())
    with pytest.raises(pv.ConfigError, match="needs labels"):
        mod(BASE, [SRC, SRC], _locs2())
    with pytest.raises(pv.ConfigError, match="wraps an IntervenableModel"):
        pv.TrainingModule(model)
    # only the interventions are handed to an optimiser that filters on requires_grad (the Trainer)
    pm.disable_model_gradients()
    assert [p for p in mod.parameters() if p.requires_grad] == pm.get_trainable_parameters()


def test_collate_interventions_builds_pyvene_layout():
    feats = [{"base": {"input_ids": torch.tensor([1, 2, 3])}, "sources": [{"input_ids": torch.tensor([4, 5, 6])}],
              "unit_locations": {"sources->base": ([2], [1])}, "labels": 7, "subspaces": [[0]]},
             {"base": {"input_ids": torch.tensor([7, 8, 9])}, "sources": [{"input_ids": torch.tensor([1, 1, 1])}],
              "unit_locations": {"sources->base": ([0], [2])}, "labels": 3, "subspaces": [[1]]}]
    b = pv.collate_interventions(feats)
    assert torch.equal(b["base"]["input_ids"], torch.tensor([[1, 2, 3], [7, 8, 9]]))
    assert torch.equal(b["sources"][0]["input_ids"], torch.tensor([[4, 5, 6], [1, 1, 1]]))
    assert b["unit_locations"] == {"sources->base": ([[[2], [0]]], [[[1], [2]]])}
    assert torch.equal(b["labels"], torch.tensor([7, 3]))
    assert b["subspaces"] == [[[0], [1]]]
    two = [{"unit_locations": {"sources->base": ([[1], [2]], [[3], [4]])}}] * 2
    assert pv.collate_interventions(two)["unit_locations"] == {"sources->base": ([[[1], [1]], [[2], [2]]], [[[3], [3]], [[4], [4]]])}
    with pytest.raises(pv.ConfigError, match="differ in shape"):
        pv.collate_interventions([{"base": {"input_ids": torch.tensor([1, 2])}}, {"base": {"input_ids": torch.tensor([1])}}])


@pytest.mark.parametrize("loc", [[[1]] * 2, None], ids=["one position (a span)", "whole tensor"])
def test_an_intervention_that_saves_its_input_for_backward_trains(loc):
    """Found while testing checkpointing: an intervention whose backward needs its input (here
    ``b * b``) used to fail ``backward`` with "modified by an inplace operation" when the
    selection was a view of the written tensor (one position, or no locations)."""
    model = tm.llama(n_layer=3)
    model.model.embed_tokens.weight.requires_grad_(True)
    pm = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": lambda b, s: b * b}, model,
                              freeze_model=False)
    _, out = pm(BASE, unit_locations={"base": loc} if loc else None)
    out.logits.float().log_softmax(-1)[..., 3].mean().backward()
    got = model.model.embed_tokens.weight.grad.clone()
    model.model.embed_tokens.weight.grad = None

    def square(t):
        t = t.clone()
        if loc is None:
            return t * t
        x = t[:, 1].clone()
        t[:, 1] = x * x
        return t

    with tm.hooked(model.model.layers[1], square):
        want_out = model(**BASE)
    want_out.logits.float().log_softmax(-1)[..., 3].mean().backward()
    torch.testing.assert_close(out.logits, want_out.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, model.model.embed_tokens.weight.grad, atol=1e-7, rtol=1e-5)
