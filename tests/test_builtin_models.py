"""Tests of vene's built-in MLP and GRU models and the output container."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from vene.models.gru import (
    GRUCell,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
)
from vene.models.mlp import (
    MLPConfig,
    MLPForClassification,
    MLPModel,
    create_mlp_classifier,
)
from vene.models.outputs import ModelOutput


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------
# ModelOutput
# ---------------------------------------------------------------------------
class _Out(ModelOutput):
    _fields = ("loss", "logits", "hidden_states")


def test_model_output_access():
    logits = torch.zeros(2, 3)
    out = _Out(logits=logits, loss=None, hidden_states=(logits,))
    assert list(out.keys()) == ["logits", "hidden_states"]
    assert out.loss is None
    assert out.logits is logits and out["logits"] is logits and out[0] is logits
    assert out[1] == (logits,)
    assert out[:1] == (logits,)
    assert out.to_tuple() == (logits, (logits,))
    out.loss = torch.tensor(1.0)
    # a later-set field goes to the end, like any dict entry
    assert out[-1] == 1.0 and "loss" in out
    out.loss = None
    assert "loss" not in out and out.loss is None
    with pytest.raises(AttributeError):
        out.not_a_field
    with pytest.raises(KeyError):
        out["loss"]


def test_model_output_field_order_and_copy():
    a, b = torch.ones(1), torch.zeros(1)
    out = _Out(hidden_states=a, logits=b)
    assert list(out) == ["logits", "hidden_states"]
    for clone in (copy.copy(out), copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
        assert type(clone) is _Out
        assert list(clone) == ["logits", "hidden_states"]
        assert torch.equal(clone.logits, b)


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------
def test_mlp_config_roundtrip():
    config = MLPConfig(h_dim=8, n_layer=3, extra_field="x")
    assert config.model_type == "mlp"
    data = config.to_dict()
    assert data["h_dim"] == 8 and data["model_type"] == "mlp" and data["extra_field"] == "x"
    assert MLPConfig.from_dict(data) == config
    assert config.hidden_size == 8 and config.num_hidden_layers == 3


@pytest.mark.parametrize("shape", [(4, 12), (4, 1, 12)])
def test_mlp_model_shapes(shape):
    config = MLPConfig(h_dim=12, n_layer=2)
    model = MLPModel(config)
    x = torch.randn(*shape)
    out = model(inputs_embeds=x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (4, 1, 12)
    assert len(out.hidden_states) == config.n_layer + 1
    assert all(h.shape == (4, 1, 12) for h in out.hidden_states)
    assert isinstance(model(inputs_embeds=x, return_dict=False), tuple)


def test_mlp_block_output_and_module_paths():
    config = MLPConfig(h_dim=6, n_layer=3, activation_function="relu")
    model = MLPModel(config)
    names = dict(model.named_modules())
    for layer in range(3):
        assert f"h.{layer}" in names and f"h.{layer}.act" in names and f"h.{layer}.ff1" in names
    seen = {}

    def hook(name):
        def fn(module, inputs, output):
            seen[name] = output.shape
        return fn

    handles = [model.h[1].register_forward_hook(hook("block")),
               model.h[1].act.register_forward_hook(hook("act"))]
    model(inputs_embeds=torch.randn(5, 6))
    for h in handles:
        h.remove()
    assert seen == {"block": (5, 1, 6), "act": (5, 1, 6)}


def test_mlp_matches_manual_computation():
    config = MLPConfig(h_dim=5, n_layer=2, activation_function="gelu")
    model = MLPModel(config)
    x = torch.randn(3, 5)
    h = x.unsqueeze(1)
    for block in model.h:
        h = F.gelu(h @ block.ff1.weight.T + block.ff1.bias)
    torch.testing.assert_close(model(inputs_embeds=x).last_hidden_state, h)


def test_mlp_classifier_logits_and_loss():
    config = MLPConfig(h_dim=12, n_layer=2, num_classes=3)
    _, tokenizer, model = create_mlp_classifier(config)
    assert tokenizer is None
    x = torch.randn(7, 12)
    labels = torch.randint(0, 3, (7,))
    out = model(inputs_embeds=x, labels=labels)
    assert out.logits.shape == (7, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert out[0] is out.loss and out[1] is out.logits
    unsqueezed = MLPForClassification(MLPConfig(h_dim=12, num_classes=3, squeeze_output=False))
    assert unsqueezed(inputs_embeds=x).logits.shape == (7, 1, 3)


def test_mlp_with_embedding():
    config = MLPConfig(h_dim=4, include_emb=True, vocab_size=10, max_position_embeddings=3)
    model = MLPModel(config)
    out = model(input_ids=torch.tensor([[1], [2]]))
    assert out.last_hidden_state.shape == (2, 1, 4)
    with pytest.raises(ValueError):
        MLPModel(MLPConfig(h_dim=4))(input_ids=torch.tensor([[1]]))


def test_create_mlp_classifier_default():
    config, tokenizer, model = create_mlp_classifier()
    assert isinstance(config, MLPConfig) and tokenizer is None
    assert isinstance(model, MLPForClassification) and model.config is config
    assert model.device.type == "cpu" and model.dtype == torch.float32


# ---------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------
def _small_gru_config(**kw):
    base = dict(n_layer=2, h_dim=6, vocab_size=11, num_classes=3)
    base.update(kw)
    return GRUConfig(**base)


def test_gru_cell_matches_hand_computation():
    config = _small_gru_config()
    cell = GRUCell(config)
    x, h = torch.randn(4, 6), torch.randn(4, 6)
    wx, bx = cell.x2h.weight, cell.x2h.bias
    wh, bh = cell.h2h.weight, cell.h2h.bias
    gx = x @ wx.T + bx
    gh = h @ wh.T + bh
    r = torch.sigmoid(gx[:, 0:6] + gh[:, 0:6])
    z = torch.sigmoid(gx[:, 6:12] + gh[:, 6:12])
    n = torch.tanh(gx[:, 12:18] + r * gh[:, 12:18])
    expected = (1 - z) * n + z * h
    torch.testing.assert_close(cell(x, h), expected)


def test_gru_cell_matches_torch_gru_cell():
    config = _small_gru_config()
    cell = GRUCell(config)
    ref = torch.nn.GRUCell(6, 6)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.x2h.weight)
        ref.bias_ih.copy_(cell.x2h.bias)
        ref.weight_hh.copy_(cell.h2h.weight)
        ref.bias_hh.copy_(cell.h2h.bias)
    x, h = torch.randn(3, 6), torch.randn(3, 6)
    torch.testing.assert_close(cell(x, h), ref(x, h))
    torch.testing.assert_close(cell(x), ref(x))


def test_gru_model_matches_hand_written_loop():
    config = _small_gru_config()
    model = GRUModel(config)
    ids = torch.randint(0, 11, (2, 5))
    out = model(input_ids=ids, output_hidden_states=True)
    emb = model.wte(ids)
    states = [torch.zeros(2, 6) for _ in range(2)]
    tops = []
    for t in range(5):
        x = emb[:, t]
        for layer in range(2):
            states[layer] = model.cells[layer](x, states[layer])
            x = states[layer]
        tops.append(x)
    expected = torch.stack(tops, dim=1)
    assert out.last_hidden_state.shape == (2, 5, 6)
    torch.testing.assert_close(out.last_hidden_state, expected)
    torch.testing.assert_close(out.final_state, torch.stack(states))
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], expected)
    # inputs_embeds gives the same result
    torch.testing.assert_close(model(inputs_embeds=emb).last_hidden_state, expected)


def test_gru_matches_torch_gru():
    config = _small_gru_config(n_layer=1)
    model = GRUModel(config)
    ref = torch.nn.GRU(6, 6, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(model.cells[0].x2h.weight)
        ref.bias_ih_l0.copy_(model.cells[0].x2h.bias)
        ref.weight_hh_l0.copy_(model.cells[0].h2h.weight)
        ref.bias_hh_l0.copy_(model.cells[0].h2h.bias)
    x = torch.randn(3, 4, 6)
    expected, _ = ref(x)
    torch.testing.assert_close(model(inputs_embeds=x).last_hidden_state, expected)


def test_gru_hooks_fire_once_per_step():
    config = _small_gru_config()
    model = GRUModel(config)
    calls = {0: [], 1: []}
    handles = [
        model.cells[layer].register_forward_hook(
            lambda m, args, out, layer=layer: calls[layer].append((args[0].shape, out.shape))
        )
        for layer in range(2)
    ]
    seq_len = 7
    model(input_ids=torch.randint(0, 11, (3, seq_len)))
    for h in handles:
        h.remove()
    assert len(calls[0]) == seq_len and len(calls[1]) == seq_len
    assert all(inp == (3, 6) and out == (3, 6) for inp, out in calls[0])


def test_gru_hook_can_change_one_step():
    config = _small_gru_config(n_layer=1)
    model = GRUModel(config)
    ids = torch.randint(0, 11, (2, 4))
    base = model(input_ids=ids).last_hidden_state
    step = {"t": 0}

    def zero_step_two(module, args, output):
        t = step["t"]
        step["t"] += 1
        return torch.zeros_like(output) if t == 2 else output

    handle = model.cells[0].register_forward_hook(zero_step_two)
    out = model(input_ids=ids).last_hidden_state
    handle.remove()
    torch.testing.assert_close(out[:, :2], base[:, :2])
    assert torch.all(out[:, 2] == 0)
    assert not torch.allclose(out[:, 3], base[:, 3])


def test_gru_attention_mask_keeps_state_on_padding():
    config = _small_gru_config()
    model = GRUForClassification(config)
    ids = torch.randint(1, 11, (1, 3))
    plain = model(input_ids=ids).logits
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    right = torch.cat([ids, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    left_mask = torch.tensor([[0, 0, 1, 1, 1]])
    right_mask = torch.tensor([[1, 1, 1, 0, 0]])
    torch.testing.assert_close(model(input_ids=left, attention_mask=left_mask).logits, plain)
    torch.testing.assert_close(model(input_ids=right, attention_mask=right_mask).logits, plain)


def test_gru_lm_logits_and_shifted_loss():
    config = _small_gru_config()
    _, tokenizer, model = create_gru_lm(config)
    assert tokenizer is None and isinstance(model, GRULMHeadModel)
    ids = torch.randint(0, 11, (2, 6))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 6, 11)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    labels = ids.clone()
    labels[:, 3:] = -100
    masked = model(input_ids=ids, labels=labels).loss
    expected_masked = F.cross_entropy(out.logits[:, :2].reshape(-1, 11), ids[:, 1:3].reshape(-1))
    torch.testing.assert_close(masked, expected_masked)


def test_gru_classifier_logits_and_loss():
    config = _small_gru_config()
    _, tokenizer, model = create_gru_classifier(config)
    assert tokenizer is None and isinstance(model, GRUForClassification)
    ids = torch.randint(0, 11, (4, 5))
    labels = torch.randint(0, 3, (4,))
    out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (4, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    last = model.gru(input_ids=ids).last_hidden_state[:, -1]
    torch.testing.assert_close(out.logits, model.score(last))
    # hidden states really are the per-layer states, not a flag
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == 3


def test_gru_initial_hidden_state():
    config = _small_gru_config(n_layer=1)
    model = GRUModel(config)
    x = torch.randn(2, 3, 6)
    h0 = torch.randn(2, 6)
    out = model(inputs_embeds=x, hidden_states=h0).last_hidden_state
    torch.testing.assert_close(out[:, 0], model.cells[0](x[:, 0], h0))


def test_create_gru_defaults():
    for factory, cls in ((create_gru, GRUModel), (create_gru_lm, GRULMHeadModel),
                         (create_gru_classifier, GRUForClassification)):
        config, tokenizer, model = factory(_small_gru_config())
        assert isinstance(config, GRUConfig) and config.model_type == "gru"
        assert tokenizer is None and isinstance(model, cls) and model.config is config
    config, tokenizer, model = create_gru()
    assert config.h_dim == 512 and config.n_layer == 2 and tokenizer is None  # pyvene: 2 layers
    assert model.wte.weight.shape == (config.vocab_size, 512)
    assert GRUConfig.from_dict(config.to_dict()) == config
