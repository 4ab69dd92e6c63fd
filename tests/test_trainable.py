"""Trainable interventions: math against hand computation, gradients, units, subspaces, IIT."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
import vene as pv

B = 3
SRC_POS = [[1, 3], [0, 2], [4, 5]]
BASE_POS = [[2, 4], [1, 5], [0, 3]]
D = 32  # hidden size of the tiny models
N = 2 * D  # two units, flattened


def _block(model, layer=1):
    return model.h[layer] if hasattr(model, "h") else model.model.layers[layer]


def _mlp(model, layer=1):
    return _block(model, layer).mlp


def _out(o):
    return o.last_hidden_state if getattr(o, "logits", None) is None else o.logits


def _sel(h, pos):
    return h[torch.arange(h.shape[0]).unsqueeze(1), torch.tensor(pos)]


def _reference(model, module, base, new_sel, pos=BASE_POS):
    """Run ``base`` with the selected units of ``module``'s output replaced by ``new_sel``."""

    def put(t):
        t = t.clone()
        t[torch.arange(t.shape[0]).unsqueeze(1), torch.tensor(pos)] = new_sel.to(t.dtype)
        return t

    with tm.hooked(module, put):
        return _out(model(**base))


def _model(name):
    return tm.gpt2() if name == "gpt2" else tm.llama()


def _masks(rows, n):
    m = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        m[i, r] = True
    return m


# ---------------------------------------------------------------------------------------------
# per type: configuration, subspaces, expected selection (hand-written, pyvene-style formulas)

ROT_SUBS = [[0, 5, 9], [1, 2, 3], [60, 61, 63]]
LAT_SUBS = [[0, 3, 5], [1, 2, 15], [7, 8, 9]]


def _rot_swap(b, s, R, rows):
    rb, rs = b @ R, s @ R
    for i, r in enumerate(rows):
        rb[i, r] = rs[i, r]
    return rb @ R.T


def _expect_rotated(iv, b, s):
    return _rot_swap(b.flatten(1), s.flatten(1), iv.rotate_layer.weight.detach(), ROT_SUBS)


def _expect_lowrank(iv, b, s):
    W = iv.rotate_layer.weight.detach()
    b, s = b.flatten(1), s.flatten(1)
    out = b.clone()
    for i, cols in enumerate([[0, 1], [2, 3], [1, 3]]):
        Wc = W[:, cols]
        out[i] = b[i] + (s[i] @ Wc - b[i] @ Wc) @ Wc.T
    return out


def _prep_boundless(iv):
    iv.set_intervention_boundaries(0.25)
    iv.set_temperature(1e-4)  # a hard mask: the first round(0.25 * 64) = 16 rotated dims


def _expect_boundless(iv, b, s):
    rows = [[j for j in r if j < 16] for r in [[0, 5, 20], [1, 15, 16], [3, 40, 63]]]
    return _rot_swap(b.flatten(1), s.flatten(1), iv.rotate_layer.weight.detach(), rows)


def _prep_sigmoid_rot(iv):
    with torch.no_grad():
        iv.masks.copy_(torch.where(torch.arange(N) % 3 == 0, 1000.0, -1000.0))
    iv.set_temperature(1.0)


def _expect_sigmoid_rot(iv, b, s):
    keep = set(range(0, N, 3))
    rows = [[j for j in r if j in keep] for r in ROT_SUBS]
    return _rot_swap(b.flatten(1), s.flatten(1), iv.rotate_layer.weight.detach(), rows)


def _prep_sigmoid(iv):
    with torch.no_grad():
        iv.mask.copy_(torch.linspace(-0.03, 0.03, N))


def _expect_sigmoid(iv, b, s):
    b, s = b.flatten(1), s.flatten(1)
    m = torch.sigmoid(torch.linspace(-0.03, 0.03, N) / 0.01) * _masks(ROT_SUBS, N)
    return (1 - m) * b + m * s


def _expect_autoencoder(iv, b, s):
    enc, dec = iv.autoencoder.encoder[0], iv.autoencoder.decoder[0]
    b, s = b.flatten(1), s.flatten(1)

    def encode(x):
        return torch.relu((x - dec.bias) @ enc.weight.T + enc.bias)

    zb, zs = encode(b), encode(s)
    z = zb.clone()
    for i, r in enumerate(LAT_SUBS):
        z[i, r] = zs[i, r]
    recon = lambda z: z @ dec.weight.T + dec.bias  # noqa: E731
    return (b - recon(zb) + recon(z)).detach()


def _prep_jumprelu(iv):
    with torch.no_grad():
        iv.threshold.copy_(torch.linspace(0.0, 0.02, iv.threshold.numel()))
        iv.b_enc.copy_(torch.linspace(-0.01, 0.01, iv.b_enc.numel()))


def _expect_jumprelu(iv, b, s):
    We, Wd, be, th, bd = (t.detach() for t in (iv.W_enc, iv.W_dec, iv.b_enc, iv.threshold, iv.b_dec))

    def encode(x):
        pre = x @ We + be
        return torch.where(pre > th, pre, torch.zeros_like(pre)).clamp_min(0)

    zb, zs = encode(b), encode(s)  # per unit: (B, 2, w)
    z = zb.clone()
    for i, r in enumerate(LAT_SUBS):
        z[i, :, r] = zs[i, :, r]
    return b - (zb @ Wd + bd) + (z @ Wd + bd)


TYPES = {
    "rotated": (pv.RotatedSpaceIntervention, {}, ROT_SUBS, None, _expect_rotated),
    "lowrank": (pv.LowRankRotatedSpaceIntervention, {"low_rank_dimension": 4}, [[0, 1], [2, 3], [1, 3]], None, _expect_lowrank),
    "boundless": (pv.BoundlessRotatedSpaceIntervention, {}, [[0, 5, 20], [1, 15, 16], [3, 40, 63]], _prep_boundless, _expect_boundless),
    "sigmoid_rot": (pv.SigmoidMaskRotatedSpaceIntervention, {}, ROT_SUBS, _prep_sigmoid_rot, _expect_sigmoid_rot),
    "sigmoid": (pv.SigmoidMaskIntervention, {}, ROT_SUBS, _prep_sigmoid, _expect_sigmoid),
    "autoencoder": (pv.AutoencoderIntervention, {"low_rank_dimension": 16}, LAT_SUBS, None, _expect_autoencoder),
    "jumprelu": (pv.JumpReLUAutoencoderIntervention, {"low_rank_dimension": 16}, LAT_SUBS, _prep_jumprelu, _expect_jumprelu),
}


def _wrap(model, cls, extra, component="block_output"):
    cfg = pv.IntervenableConfig({"layer": 1, "component": component, "max_number_of_units": 2, **extra}, cls)
    return pv.IntervenableModel(cfg, model)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", list(TYPES))
def test_math_matches_hand_computation(name, kind):
    model = _model(name)
    cls, extra, subs, prep, expect = TYPES[kind]
    iv = _wrap(model, cls, extra)
    inter = iv.interventions[iv.sorted_keys[0]]
    if prep is not None:
        prep(inter)
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    block = _block(model)
    hb = tm.capture(model, block, base)
    hs = tm.capture(model, block, src)
    b, s = _sel(hb, BASE_POS), _sel(hs, SRC_POS)
    with torch.no_grad():
        want_sel = expect(inter, b, s).reshape(b.shape)
        ref = _reference(model, block, base, want_sel)
        _, out = iv(base, [src], {"sources->base": ([SRC_POS], [BASE_POS])}, subspaces=[subs])
    assert (want_sel - b).abs().max() > 1e-3, "the intervention should change the base"
    torch.testing.assert_close(_out(out), ref, atol=2e-5, rtol=1e-4)


def _trainable_names(iv):
    inter = iv.interventions[iv.sorted_keys[0]]
    return inter, {n for n, p in inter.named_parameters() if p.requires_grad}


EXPECTED_GRADS = {
    "rotated": {"rotate_layer.parametrizations.weight.original"},
    "lowrank": {"rotate_layer.parametrizations.weight.original"},
    "boundless": {"rotate_layer.parametrizations.weight.original", "intervention_boundaries"},
    "sigmoid_rot": {"rotate_layer.parametrizations.weight.original", "masks"},
    "sigmoid": {"mask"},
    "autoencoder": {"autoencoder.encoder.0.weight", "autoencoder.decoder.0.weight"},
    # the threshold is a step (no gradient, so not trainable); b_dec cancels when the SAE error is kept
    "jumprelu": {"W_enc", "W_dec", "b_enc"},
}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", list(TYPES))
def test_gradients_reach_exactly_the_intervention(name, kind):
    model = _model(name)
    cls, extra, subs, _, _ = TYPES[kind]
    iv = _wrap(model, cls, extra)
    inter, names = _trainable_names(iv)
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    _, out = iv(base, [src], {"sources->base": ([SRC_POS], [BASE_POS])}, subspaces=[subs])
    w = torch.randn(_out(out).shape, generator=torch.Generator().manual_seed(3))
    (_out(out) * w).sum().backward()
    got = {n for n, p in inter.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # the autoencoder's biases cancel in z(source) - z(base) where both runs activate the same
    # latents, so their gradient may legitimately be zero
    maybe = {"autoencoder.encoder.0.bias", "autoencoder.decoder.0.bias"} if kind == "autoencoder" else set()
    assert EXPECTED_GRADS[kind] <= got <= EXPECTED_GRADS[kind] | maybe
    assert got <= names
    assert all(p.grad is None for p in model.parameters())
    temp = getattr(inter, "temperature", None)
    if temp is not None:
        assert not temp.requires_grad and temp.grad is None
        assert all(p is not temp for p in iv.get_trainable_parameters())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_lora_adapter_math_and_gradients(name):
    model = _model(name)
    cfg = pv.IntervenableConfig({"layer": 1, "component": "mlp_output", "max_number_of_units": 2, "low_rank_dimension": 4}, pv.LoRAIntervention)
    iv = pv.IntervenableModel(cfg, model)
    lora = iv.interventions[iv.sorted_keys[0]]
    assert lora.input_dim == D and lora.is_source_constant
    base = tm.ids(B, 6, 1)
    mlp = _mlp(model)
    # a fresh adapter is the identity (B = 0)
    with torch.no_grad():
        _, out0 = iv(base, unit_locations={"base": BASE_POS})
        torch.testing.assert_close(_out(out0), _out(model(**base)))
        lora.lora_B.copy_(torch.randn(4, D, generator=torch.Generator().manual_seed(0)) * 0.1)
    x = _sel(tm.capture(model, mlp, base, pre=True), BASE_POS)
    y = _sel(tm.capture(model, mlp, base), BASE_POS)
    subs = [[0, 1, 2], [3, 4, 5], [30, 31, 0]]
    with torch.no_grad():
        delta = x @ lora.lora_A @ lora.lora_B
        want = y + delta * _masks(subs, D).unsqueeze(1)
        ref = _reference(model, mlp, base, want)
        _, out = iv(base, unit_locations={"base": BASE_POS}, subspaces=[subs])
    torch.testing.assert_close(_out(out), ref, atol=2e-5, rtol=1e-4)
    _, out = iv(base, unit_locations={"base": BASE_POS})
    (_out(out) * torch.randn(_out(out).shape)).sum().backward()
    assert lora.lora_A.grad.abs().sum() > 0 and lora.lora_B.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_pca_rotated_space_keeps_the_residual(gpt2):
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    block = _block(gpt2)
    hb, hs = tm.capture(gpt2, block, base), tm.capture(gpt2, block, src)
    data = torch.cat([hb, hs]).reshape(-1, D)
    mean = data.mean(0)
    comps = torch.linalg.svd(data - mean, full_matrices=False).Vh[:8]  # (8, 32), orthonormal rows

    class FakePCA:
        components_ = comps.numpy()
        mean_ = mean.numpy()

    inter = pv.PCARotatedSpaceIntervention(pca=FakePCA(), embed_dim=D)
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": inter}, gpt2)
    subs = [[0, 1], [2, 5], [7, 3]]
    b, s = _sel(hb, BASE_POS), _sel(hs, SRC_POS)

    def z(x):
        return (x - mean) @ comps.T

    zb, zs = z(b), z(s)
    zn = zb.clone()
    for i, r in enumerate(subs):
        zn[i, :, r] = zs[i, :, r]
    residual = b - (zb @ comps + mean)
    want = zn @ comps + mean + residual
    with torch.no_grad():
        ref = _reference(gpt2, block, base, want)
        _, out = iv(base, [src], {"sources->base": ([SRC_POS], [BASE_POS])}, subspaces=[subs])
    torch.testing.assert_close(out.last_hidden_state, ref, atol=2e-5, rtol=1e-4)
    assert iv.get_trainable_parameters() == []


def test_per_unit_rotation_when_sized_for_one_unit(gpt2):
    """An intervention sized for one unit (embed_dim = d) acts on each selected unit alike."""
    inter = pv.RotatedSpaceIntervention(embed_dim=D)
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": inter}, gpt2)
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    block = _block(gpt2)
    b = _sel(tm.capture(gpt2, block, base), BASE_POS)
    s = _sel(tm.capture(gpt2, block, src), SRC_POS)
    R = inter.rotate_layer.weight.detach()
    rb, rs = b @ R, s @ R
    rb[..., :5] = rs[..., :5]
    want = rb @ R.T
    inter.set_interchange_dim(5)
    with torch.no_grad():
        ref = _reference(gpt2, block, base, want)
        _, out = iv(base, [src], {"sources->base": ([SRC_POS], [BASE_POS])})
    torch.testing.assert_close(out.last_hidden_state, ref, atol=2e-5, rtol=1e-4)


def test_rotation_stays_orthogonal_during_training(gpt2):
    cfg = pv.IntervenableConfig(
        [{"layer": 1, "component": "block_output", "low_rank_dimension": 3, "intervention_type": pv.LowRankRotatedSpaceIntervention},
         {"layer": 2, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}]
    )
    iv = pv.IntervenableModel(cfg, gpt2)
    opt = torch.optim.Adam(iv.get_trainable_parameters(), lr=0.1)
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    start = [p.detach().clone() for p in iv.get_trainable_parameters()]
    for _ in range(5):
        _, out = iv(base, [src, src], {"sources->base": 3})
        loss = out.last_hidden_state[:, -1].pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(start, iv.get_trainable_parameters()))
    lr_w = iv.interventions[iv.sorted_keys[0]].rotate_layer.weight
    r_w = iv.interventions[iv.sorted_keys[1]].rotate_layer.weight
    torch.testing.assert_close(lr_w.T @ lr_w, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(r_w @ r_w.T, torch.eye(D), atol=1e-5, rtol=0)
    sd = iv.interventions[iv.sorted_keys[1]].state_dict()
    assert "rotate_layer.parametrizations.weight.original" in sd


def test_linked_parameters_listed_once(gpt2):
    part = [[0, 16], [16, 32]]
    cfg = pv.IntervenableConfig(
        [{"layer": 1, "component": "block_output", "subspace_partition": part, "intervention_link_key": 0}] * 2
        + [{"layer": 2, "component": "block_output"}],
        pv.RotatedSpaceIntervention,
    )
    iv = pv.IntervenableModel(cfg, gpt2)
    params = iv.get_trainable_parameters()
    assert len(params) == 2 and len({id(p) for p in params}) == 2
    assert iv.count_parameters() == 2 * D * D
    assert len([n for n, p in iv.named_parameters() if p.requires_grad]) == 2
    k0, k1, _ = iv.sorted_keys
    assert iv.interventions[k0] is iv.interventions[k1]


def test_set_temperature_reaches_every_annealed_type(gpt2):
    cfg = pv.IntervenableConfig([
        {"layer": 0, "component": "block_output", "intervention_type": pv.BoundlessRotatedSpaceIntervention},
        {"layer": 1, "component": "block_output", "intervention_type": pv.SigmoidMaskIntervention},
        {"layer": 2, "component": "block_output", "intervention_type": pv.SigmoidMaskRotatedSpaceIntervention},
    ])
    iv = pv.IntervenableModel(cfg, gpt2)
    iv.set_temperature(0.5)
    temps = [iv.interventions[k].get_temperature() for k in iv.sorted_keys]
    assert [float(t) for t in temps] == [0.5, 0.5, 0.5]
    trainable = {id(p) for p in iv.get_trainable_parameters()}
    assert not any(id(t) in trainable for t in temps)
    # boundless params: rotation (n*n) + boundary; temperature is not trained
    assert iv.count_parameters() == (D * D + 1) + D + (D * D + D)


def test_unit_count_mismatch_is_a_clear_error_and_leaves_no_hooks(gpt2):
    iv = _wrap(gpt2, pv.RotatedSpaceIntervention, {})
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    with pytest.raises(pv.ShapeMismatchError, match="max_number_of_units"):
        iv(base, [src], {"sources->base": 3})  # one unit, for an intervention sized for two
    with pytest.raises(pv.ShapeMismatchError, match="max_number_of_units"):
        iv(base, [src], {"sources->base": ([[[0, 1, 2]] * B], [[[0, 1, 2]] * B])})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in gpt2.modules())


def test_construction_errors(gpt2):
    with pytest.raises(pv.ConfigError, match="low_rank_dimension"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.LowRankRotatedSpaceIntervention}, gpt2)
    with pytest.raises(pv.ConfigError, match="latent_dim"):
        pv.AutoencoderIntervention(embed_dim=8)
    with pytest.raises(pv.ConfigError, match="embed_dim"):
        pv.RotatedSpaceIntervention()
    iv = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}, gpt2)
    with pytest.raises(pv.ConfigError, match="source"):
        iv.interventions[iv.sorted_keys[0]](torch.zeros(2, D))


# ---------------------------------------------------------------------------------------------
# model-side helpers and IIT


def test_train_eval_zero_grad_semantics(gpt2):
    iv = _wrap(gpt2, pv.RotatedSpaceIntervention, {})
    assert iv.train() is iv
    assert iv.training and gpt2.training and all(m.training for m in iv.interventions.modules())
    assert iv.eval() is iv
    assert not iv.training and not gpt2.training
    _, out = iv(tm.ids(B, 6, 1), [tm.ids(B, 6, 2)], {"sources->base": ([SRC_POS], [BASE_POS])})
    out.last_hidden_state[:, 0].pow(2).sum().backward()
    p = iv.get_trainable_parameters()[0]
    assert p.grad is not None
    iv.zero_grad()
    assert p.grad is None or not p.grad.any()


def _sigmoid_mlp():
    torch.manual_seed(0)
    cfg = pv.MLPConfig(h_dim=8, n_layer=2, num_classes=3, activation_function="sigmoid", pdrop=0.0)
    return pv.create_mlp_classifier(cfg)[2]


@pytest.mark.parametrize("batch_sources", [True, False])
def test_iit_with_model_gradients_matches_out_of_place_reference(batch_sources):
    """pyvene's in-place writes break autograd here (sigmoid saves its output)."""
    model = _sigmoid_mlp()
    ref_model = _sigmoid_mlp()
    g = torch.Generator().manual_seed(1)
    base = {"inputs_embeds": torch.randn(4, 8, generator=g)}
    src = {"inputs_embeds": torch.randn(4, 8, generator=g)}
    labels = torch.tensor([0, 1, 2, 1])
    iv = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model, batch_sources=batch_sources)
    iv.enable_model_gradients()
    assert any(p is model.score.weight for p in iv.get_trainable_parameters())
    _, out = iv(base, [src], {"sources->base": 0})
    F.cross_entropy(out.logits, labels).backward()
    # reference: plain hooks, out-of-place, gradients flowing into the source run too
    block = ref_model.mlp.h[0]
    store = {}
    h = block.register_forward_hook(lambda m, a, o: store.__setitem__("s", o))
    ref_model(**src)
    h.remove()
    h = block.register_forward_hook(lambda m, a, o: torch.cat([store["s"][:, :1], o[:, 1:]], 1))
    ref_out = ref_model(**base)
    h.remove()
    F.cross_entropy(ref_out.logits, labels).backward()
    torch.testing.assert_close(out.logits, ref_out.logits)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_iit_trains_tiny_gpt2_with_a_rotation():
    model = tm.gpt2(lm=True)
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}, model)
    iv.enable_model_gradients()
    params = iv.get_trainable_parameters()
    assert len(params) == 1 + len(list(model.parameters()))
    opt = torch.optim.Adam(params, lr=1e-3)
    base, src = tm.ids(4, 6, 1), tm.ids(4, 6, 2)
    target = tm.ids(4, 1, 3)["input_ids"].view(-1)
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    losses = []
    for _ in range(4):
        _, out = iv(base, [src], {"sources->base": 2})
        loss = F.cross_entropy(out.logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)


def test_checkpointing_vene_cannot_follow_is_refused_with_a_clear_error():
    # transformers' own checkpointing is supported (tests/test_scaleout.py); a layer flagged
    # gradient_checkpointing without the _gradient_checkpointing_func that vene re-applies the
    # interventions through checkpoints in a way vene cannot see: refused, model left as it was
    model = tm.gpt2(lm=True)
    # transformers 5 renamed gradient_checkpointing_enable; both ends of the supported range are tested
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    enable()
    del model.transformer.h[1].__dict__["_gradient_checkpointing_func"]
    iv = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.RotatedSpaceIntervention}, model)
    model.train()  # wrapping put it in eval mode
    base, src = tm.ids(2, 6, 1), tm.ids(2, 6, 2)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with pytest.raises(pv.ConfigError, match="without a _gradient_checkpointing_func"):
        iv(base, [src], {"sources->base": 2})
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with torch.no_grad():  # no gradients recorded: nothing to refuse
        try:
            model(**base)
        except AttributeError:  # transformers < 5.25 checkpoints under no_grad too: the plain model fails
            pass
        else:
            iv(base, [src], {"sources->base": 2})
    disable()
    _, out = iv(base, [src], {"sources->base": 2})
    out.logits.sum().backward()


# ---------------------------------------------------------------------------------------------
# training loops


def _relu_mlp(h=8, seed=0):
    torch.manual_seed(seed)
    cfg = pv.MLPConfig(h_dim=h, n_layer=2, num_classes=3, activation_function="relu", pdrop=0.0)
    model = pv.create_mlp_classifier(cfg)[2]
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _batches(sizes, h=8, n_src=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        shape = (n, h) if n_src is None else (n, n_src, h)
        out.append({"input_ids": torch.randn(n, h, generator=g), "source_input_ids": torch.randn(*shape, generator=g),
                    "labels": torch.randint(0, 3, (n,), generator=g)})
    return out


def test_batch_unit_locations_reads_pyvene_fields(gpt2):
    from vene.training import batch_unit_locations

    iv = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], gpt2)
    batch = {"source_0->base.0.pos": torch.tensor([[1], [2]]), "source_0->base.1.pos": torch.tensor([[3], [4]]),
             "source_1->base.1.pos": [[0], [5]]}
    assert batch_unit_locations(iv, batch) == {"sources->base": ([[[1], [2]], [[0], [5]]], [[[3], [4]], [[0], [5]]])}
    assert batch_unit_locations(iv, {"input_ids": 0}) is None


def test_train_alignment_learns_and_anneals_the_temperature():
    model = _relu_mlp()
    iv = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.BoundlessRotatedSpaceIntervention}, model)
    data = _batches([16] * 6)
    with torch.no_grad():  # target: the source's own prediction, reachable by swapping everything
        for b in data:
            b["labels"] = model(inputs_embeds=b["source_input_ids"]).logits.argmax(-1)
    inter = iv.interventions[iv.sorted_keys[0]]
    beta0 = inter.intervention_boundaries.item()
    before = iv.eval_alignment(data, lambda lg, y: {"acc": (lg.argmax(-1) == y).float().mean()}, input_key="inputs_embeds",
                               metrics_args="tensors", progress=False)
    hist = iv.train_alignment(data, lambda lg, y: F.cross_entropy(lg, y), None, None, lr=0.05, epochs=4,
                              input_key="inputs_embeds", progress=False, gradient_accumulation_steps=2)
    after = iv.eval_alignment(data, lambda lg, y: {"acc": (lg.argmax(-1) == y).float().mean()}, input_key="inputs_embeds",
                              metrics_args="tensors", progress=False)
    assert len(hist["loss"]) == 4 * 3  # 6 batches / accumulation 2, 4 epochs
    assert float(inter.temperature) == pytest.approx(0.1, abs=1e-6)
    assert inter.intervention_boundaries.item() > beta0
    assert after["acc"] > before["acc"] and after["acc"] >= 0.9
    assert all(p.grad is None for p in model.parameters())


def test_eval_alignment_is_a_batch_weighted_average_and_restores_modes():
    model = _relu_mlp()
    iv = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], model)
    data = _batches([4, 2], n_src=2)
    iv.train()
    res = iv.eval_alignment(train_dataloader=data, compute_metrics=lambda lg, y: {"y": y.float().mean(), "l": lg[:, 0].mean()},
                            input_key="inputs_embeds", metrics_args="tensors", progress=False)
    assert iv.interventions.training
    labels = torch.cat([b["labels"] for b in data]).float()
    assert res["y"] == pytest.approx(float(labels.mean()))
    with torch.no_grad():  # two groups: source g of each example is source_input_ids[:, g]
        logits = torch.cat([iv({"inputs_embeds": b["input_ids"]}, [{"inputs_embeds": b["source_input_ids"][:, g]} for g in range(2)])[1].logits
                            for b in data])
    assert res["l"] == pytest.approx(float(logits[:, 0].mean()), abs=1e-6)


def test_train_alignment_trains_the_model_after_enable_model_gradients():
    model = _sigmoid_mlp()
    iv = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model)
    with pytest.raises(pv.ConfigError, match="Nothing to train"):
        iv.train_alignment(_batches([4]), lambda lg, y: F.cross_entropy(lg, y), None, None, progress=False)
    iv.enable_model_gradients()
    w0 = model.score.weight.detach().clone()
    hist = iv.train_alignment(_batches([8] * 3), lambda lg, y: F.cross_entropy(lg, y), None, None, epochs=2,
                              input_key="inputs_embeds", progress=False)
    assert len(hist["loss"]) == 6 and all(math.isfinite(v) for v in hist["loss"])
    assert not torch.equal(w0, model.score.weight)


@pytest.mark.parametrize("keep_last_dim", [True, False])
def test_head_units_concatenate_heads_like_pyvene(gpt2, keep_last_dim):
    """(batch, heads, pos, dh) selections act on concatenated heads: a hard mask covering the first
    selected head's features equals interchanging that head alone."""
    dh = D // 4
    mask = pv.SigmoidMaskIntervention(embed_dim=2 * dh, keep_last_dim=keep_last_dim)
    with torch.no_grad():
        mask.mask.copy_(torch.cat([torch.full((dh,), 1.0), torch.full((dh,), -1.0)]))
    mask.set_temperature(1e-4)
    comp = {"layer": 1, "component": "head_attention_value_output", "unit": "h.pos", "max_number_of_units": 2}
    iv = pv.IntervenableModel(dict(comp, intervention=mask), gpt2)
    ref = pv.IntervenableModel(dict(comp, intervention_type=pv.VanillaIntervention), gpt2)
    base, src = tm.ids(B, 6, 1), tm.ids(B, 6, 2)
    heads, pos = [[1, 3]] * B, [[0, 2, 5]] * B
    with torch.no_grad():
        _, out = iv(base, [src], {"sources->base": ([[heads, pos]], [[heads, pos]])})
        _, want = ref(base, [src], {"sources->base": ([[[[1]] * B, pos]], [[[[1]] * B, pos]])})
    torch.testing.assert_close(out.last_hidden_state, want.last_hidden_state)
    assert not torch.allclose(want.last_hidden_state, gpt2(**base).last_hidden_state)
