"""Tests for vene.causal_model.CausalModel (offline, seeded)."""

import copy
import random

import pytest
import torch

from vene.causal_model import CausalModel, CausalModelError, SamplingError

# Six distinct 4-dim "one-hot-ish" entity vectors.
ENTITIES = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
    [1.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 1.0],
]
DIM = 4


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


def equality_spec():
    """Hierarchical equality model, built as in the DAS tutorial."""
    variables = ["W", "X", "Y", "Z", "WX", "YZ", "O"]
    values = {v: ENTITIES for v in ["W", "X", "Y", "Z"]}
    values["WX"] = [True, False]
    values["YZ"] = [True, False]
    values["O"] = [True, False]
    parents = {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]}

    def filler():
        return ENTITIES[0]

    functions = {
        "W": filler,
        "X": filler,
        "Y": filler,
        "Z": filler,
        "WX": lambda x, y: x == y,
        "YZ": lambda x, y: x == y,
        "O": lambda x, y: x == y,
    }
    return variables, values, parents, functions


def equality_model(**kwargs):
    return CausalModel(*equality_spec(), **kwargs)


def arithmetic_model():
    variables = ["o", "s", "c", "b", "a"]
    values = {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1, 2], "s": list(range(5)), "o": list(range(7))}
    parents = {"a": [], "b": [], "c": [], "s": ["a", "b"], "o": ["s", "c"]}
    functions = {
        "a": lambda: 0,
        "b": lambda: 1,
        "c": lambda: 2,
        "s": lambda a, b: a + b,
        "o": lambda s, c: s + c,
    }
    return CausalModel(variables, values, parents, functions)


def chain_model():
    """A, D inputs; B = not A; C = B and D."""
    variables = ["A", "B", "C", "D"]
    values = {v: [False, True] for v in variables}
    parents = {"A": [], "B": ["A"], "C": ["B", "D"], "D": []}
    functions = {
        "A": lambda: False,
        "D": lambda: True,
        "B": lambda a: not a,
        "C": lambda b, d: b and d,
    }
    return CausalModel(variables, values, parents, functions)


def decode_inputs(tensor):
    """Split an input tensor of the equality model back into W, X, Y, Z lists."""
    chunks = tensor.reshape(4, DIM).tolist()
    return dict(zip(["W", "X", "Y", "Z"], chunks))


# ---------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------


def test_structure_of_equality_model():
    model = equality_model()
    assert model.inputs == ["W", "X", "Y", "Z"]
    assert model.outputs == ["O"]
    assert model.timesteps == {"W": 0, "X": 0, "Y": 0, "Z": 0, "WX": 1, "YZ": 1, "O": 2}
    assert model.end_time == 2
    assert model.variables == ["W", "X", "Y", "Z", "WX", "YZ", "O"]
    assert model.children["W"] == ["WX"]
    assert model.children["WX"] == ["O"]
    assert model.children["O"] == []
    # equivalence classes are tabulated for non-inputs
    assert set(model.equiv_classes) == {"WX", "YZ", "O"}
    assert len(model.equiv_classes["WX"][True]) == len(ENTITIES)
    assert len(model.equiv_classes["WX"][False]) == len(ENTITIES) ** 2 - len(ENTITIES)
    assert model.equiv_classes["O"][True] == [{"WX": True, "YZ": True}, {"WX": False, "YZ": False}]


def test_outputs_moved_to_end_time():
    # o2 depends directly on an input but is an output: it is placed at the last step
    model = CausalModel(
        ["a", "m", "o1", "o2"],
        {"a": [0, 1], "m": [0, 1], "o1": [0, 1], "o2": [0, 1]},
        {"a": [], "m": ["a"], "o1": ["m"], "o2": ["a"]},
        {"a": lambda: 0, "m": lambda a: a, "o1": lambda m: m, "o2": lambda a: a},
    )
    assert model.timesteps == {"a": 0, "m": 1, "o1": 2, "o2": 2}
    assert model.outputs == ["o1", "o2"]
    t, end = model.generate_timesteps()
    assert t["o2"] == 1 and end == 2


def test_explicit_timesteps_validated_and_used():
    variables, values, parents, functions = equality_spec()
    timesteps = {"W": 0, "X": 0, "Y": 0, "Z": 0, "WX": 1, "YZ": 2, "O": 5}
    model = CausalModel(variables, values, parents, functions, timesteps=timesteps)
    assert model.timesteps == timesteps
    assert model.end_time == 5
    assert model.variables.index("WX") < model.variables.index("YZ")
    bad = dict(timesteps, WX=0)
    with pytest.raises(CausalModelError, match="WX"):
        CausalModel(variables, values, parents, functions, timesteps=bad)
    missing = {k: v for k, v in timesteps.items() if k != "O"}
    with pytest.raises(CausalModelError, match="'O'"):
        CausalModel(variables, values, parents, functions, timesteps=missing)


def test_caller_arguments_untouched():
    variables, values, parents, functions = equality_spec()
    variables = ["O", "YZ", "Z", "W", "WX", "Y", "X"]
    saved = copy.deepcopy((variables, values, parents))
    saved_functions = dict(functions)
    pos = {"O": (1.5, 2)}
    model = CausalModel(variables, values, parents, functions, pos=pos)
    model.add_variable("NO", [True, False], ["O"], lambda o: not o)
    assert (variables, values, parents) == saved
    assert functions == saved_functions
    assert pos == {"O": (1.5, 2)}
    assert "NO" not in values and "NO" not in parents


def test_pos_not_shared_between_instances():
    m1 = equality_model()
    m2 = equality_model()
    assert m1.pos is not m2.pos
    m1.pos["W"] = (99, 99)
    assert m2.pos["W"] == (0, 0)
    # default layout: (index within timestep, timestep)
    assert m2.pos["WX"] == (0, 1) and m2.pos["YZ"] == (1, 1) and m2.pos["O"] == (0, 2)
    m3 = equality_model(pos={"O": (1.5, 2)})
    assert m3.pos["O"] == (1.5, 2)
    assert m3.pos["Z"] == (3, 0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda v, val, p, f: val.pop("WX"), "WX"),
        (lambda v, val, p, f: p.pop("YZ"), "YZ"),
        (lambda v, val, p, f: f.pop("O"), "O"),
        (lambda v, val, p, f: p.__setitem__("O", ["WX", "Q"]), "Q"),
        (lambda v, val, p, f: p.__setitem__("W", ["O"]), "cycle"),
        (lambda v, val, p, f: f.__setitem__("O", lambda x: x), "O"),
    ],
)
def test_validation_errors(mutate, match):
    variables, values, parents, functions = equality_spec()
    values, parents, functions = dict(values), dict(parents), dict(functions)
    mutate(variables, values, parents, functions)
    with pytest.raises(ValueError, match=match):
        CausalModel(variables, values, parents, functions)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def test_run_forward():
    model = equality_model()
    default = model.run_forward()
    assert default == {"W": ENTITIES[0], "X": ENTITIES[0], "Y": ENTITIES[0], "Z": ENTITIES[0],
                       "WX": True, "YZ": True, "O": True}
    setting = model.run_forward({"W": ENTITIES[1], "X": ENTITIES[2], "Y": ENTITIES[3], "Z": ENTITIES[4]})
    assert (setting["WX"], setting["YZ"], setting["O"]) == (False, False, True)
    setting = model.run_forward({"W": ENTITIES[1], "X": ENTITIES[1], "Y": ENTITIES[3], "Z": ENTITIES[4]})
    assert (setting["WX"], setting["YZ"], setting["O"]) == (True, False, False)
    # intervening on an intermediate variable
    setting = model.run_forward({"W": ENTITIES[1], "X": ENTITIES[1], "YZ": True})
    assert setting["O"] is True
    # a fully specified setting is kept as is
    full = dict(setting, O=False)
    assert model.run_forward(full) == full
    with pytest.raises(ValueError, match="Q"):
        model.run_forward({"Q": 1})


def test_run_interchange_by_hand():
    model = equality_model()
    e = ENTITIES
    base = {"W": e[0], "X": e[1], "Y": e[2], "Z": e[2]}  # WX=False, YZ=True -> O=False
    source = {"W": e[3], "X": e[3], "Y": e[4], "Z": e[5]}  # WX=True, YZ=False
    assert model.run_forward(base)["O"] is False
    out = model.run_interchange(base, {"WX": source})
    assert out["WX"] is True and out["YZ"] is True and out["O"] is True
    assert out["W"] == e[0] and out["X"] == e[1]  # base inputs kept
    # swapping YZ as well: WX=True, YZ=False -> O=False
    out = model.run_interchange(base, {"WX": source, "YZ": source})
    assert (out["WX"], out["YZ"], out["O"]) == (True, False, False)
    # the base may be a full setting: its intermediate values do not block the change
    out_full = model.run_interchange(model.run_forward(base), {"WX": source})
    assert out_full["O"] is True
    # interchange on an input variable
    out = model.run_interchange(base, {"X": {"W": e[5], "X": e[0], "Y": e[5], "Z": e[5]}})
    assert out["X"] == e[0] and out["WX"] is True and out["O"] is True
    # different sources per variable
    source_yz_false = {"W": e[0], "X": e[0], "Y": e[0], "Z": e[1]}
    out = model.run_interchange(base, {"YZ": source_yz_false})
    assert (out["WX"], out["YZ"], out["O"]) == (False, False, True)


def test_arithmetic_model():
    model = arithmetic_model()
    assert model.inputs == ["a", "b", "c"]
    assert model.outputs == ["o"]
    assert model.variables == ["a", "b", "c", "s", "o"]
    assert model.timesteps == {"a": 0, "b": 0, "c": 0, "s": 1, "o": 2}
    assert model.run_forward() == {"a": 0, "b": 1, "c": 2, "s": 1, "o": 3}
    base = {"a": 2, "b": 2, "c": 1}
    assert model.run_forward(base)["o"] == 5
    out = model.run_interchange(base, {"s": {"a": 0, "b": 1, "c": 0}})
    assert out["s"] == 1 and out["o"] == 2
    out = model.run_interchange(base, {"c": {"a": 0, "b": 0, "c": 2}})
    assert out["o"] == 6
    assert torch.equal(model.input_to_tensor(base), torch.tensor([2.0, 2.0, 1.0]))
    assert torch.equal(model.output_to_tensor(model.run_forward(base)), torch.tensor([5.0]))
    # output_to_tensor completes an input setting
    assert torch.equal(model.output_to_tensor(base), torch.tensor([5.0]))
    assert model.sample_intervention().keys() == {"s"}


def test_numpy_valued_model_as_in_the_das_tutorial():
    np = pytest.importorskip("numpy")
    reps = [np.array([round(random.uniform(-1, 1), 2) for _ in range(2)]) for _ in range(10)]
    variables, values, parents, functions = equality_spec()
    values = dict(values, **{v: reps for v in ["W", "X", "Y", "Z"]})
    functions = dict(functions, WX=np.array_equal, YZ=np.array_equal)
    for v in ["W", "X", "Y", "Z"]:
        functions[v] = lambda: reps[0]
    model = CausalModel(variables, values, parents, functions, equiv_classes={})
    assert model.equiv_classes["WX"][True][0]["W"] is reps[0]
    data = model.generate_counterfactual_dataset(16, intervention_id, 4, sampler=model.sample_input_tree_balanced)
    for ex in data:
        assert ex["input_ids"].shape == (8,) and ex["source_input_ids"].shape == (2, 8)
    inp = model.sample_input(mandatory={"WX": True})
    assert np.array_equal(inp["W"], inp["X"])
    assert model.run_interchange(inp, {"WX": {"W": reps[0], "X": reps[1]}})["WX"] is False
    assert model.find_live_paths(inp)[3]  # W -> WX -> O is live


def test_input_to_tensor_mixed_value_types():
    model = CausalModel(
        ["a", "b", "c", "o"],
        {"a": [0], "b": [[1, 2]], "c": [torch.tensor([[3.0], [4.0]])], "o": [True, False]},
        {"a": [], "b": [], "c": [], "o": ["a", "b", "c"]},
        {
            "a": lambda: 7,
            "b": lambda: [1, 2],
            "c": lambda: torch.tensor([[3.0], [4.0]]),
            "o": lambda a, b, c: a > 0,
        },
    )
    setting = model.run_forward()
    t = model.input_to_tensor(setting)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.tensor([7.0, 1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(model.output_to_tensor(setting), torch.tensor([1.0]))


# ---------------------------------------------------------------------------
# add_variable
# ---------------------------------------------------------------------------


def test_add_variable_keeps_model_consistent():
    model = arithmetic_model()
    model.add_variable("p", list(range(14)), ["o"], lambda o: 2 * o)
    assert model.outputs == ["p"]
    assert "o" not in model.outputs
    assert model.children["o"] == ["p"]
    assert model.timesteps["p"] == 3 and model.end_time == 3
    assert model.variables[-1] == "p"
    assert model.pos["p"] == (0, 3)
    assert model.run_forward({"a": 1, "b": 1, "c": 1})["p"] == 6
    assert "p" in model.equiv_classes
    # a second output attached to an input: also moved to the final step
    model.add_variable("q", [0, 1, 2], ["a"], lambda a: a)
    assert model.outputs == ["p", "q"]
    assert model.timesteps["q"] == model.end_time == 3
    assert model.inputs == ["a", "b", "c"]


def test_add_variable_pyvene_order_and_errors():
    model = chain_model()
    model.add_variable("E", [False, True], ["C"], [], lambda c: not c)
    assert model.outputs == ["E"]
    before = copy.deepcopy((model.variables, model.outputs, model.timesteps, model.children))
    with pytest.raises(ValueError, match="Q"):
        model.add_variable("F", [0, 1], ["Q"], lambda q: q)
    with pytest.raises(ValueError, match="F"):
        model.add_variable("F", [0, 1], ["E"], lambda a, b: a)  # wrong arity
    with pytest.raises(ValueError):
        model.add_variable("E", [0, 1], ["A"], lambda a: a)  # already exists
    assert (model.variables, model.outputs, model.timesteps, model.children) == before


def test_add_variable_with_explicit_timesteps():
    model = CausalModel(
        ["a", "b"], {"a": [0, 1], "b": [0, 1]}, {"a": [], "b": ["a"]},
        {"a": lambda: 0, "b": lambda a: a}, timesteps={"a": 0, "b": 4},
    )
    model.add_variable("c", [0, 1], ["b"], lambda b: b)
    assert model.timesteps == {"a": 0, "b": 4, "c": 5}
    with pytest.raises(ValueError, match="earlier"):
        model.add_variable("d", [0, 1], ["c"], lambda c: c, 5)
    assert "d" not in model.values


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------


def test_sample_input_constraints():
    model = equality_model()
    for _ in range(20):
        inp = model.sample_input()
        assert set(inp) == {"W", "X", "Y", "Z"}
        assert all(inp[v] in ENTITIES for v in inp)
    inp = model.sample_input(mandatory={"W": ENTITIES[2], "WX": True})
    assert inp["W"] == ENTITIES[2] and inp["X"] == ENTITIES[2]
    inp = model.sample_input(mandatory=lambda s: s["O"] is False)
    assert model.run_forward(inp)["O"] is False
    inp = model.sample_input(output_var="YZ", output_var_value=True)
    assert inp["Y"] == inp["Z"]
    with pytest.raises(SamplingError):
        model.sample_input(mandatory={"WX": True, "W": ENTITIES[0], "X": ENTITIES[1]})


def test_sample_intervention():
    model = equality_model()
    seen = set()
    for _ in range(100):
        iv = model.sample_intervention()
        assert iv and set(iv) <= {"WX", "YZ"}
        assert all(value in (True, False) for value in iv.values())
        seen.add(tuple(iv))
    assert seen == {("WX",), ("YZ",), ("WX", "YZ")}
    assert model.sample_intervention(mandatory={"WX": False})["WX"] is False
    no_middle = CausalModel(["a", "o"], {"a": [0, 1], "o": [0, 1]}, {"a": [], "o": ["a"]},
                            {"a": lambda: 0, "o": lambda a: a})
    with pytest.raises(ValueError, match="intermediate"):
        no_middle.sample_intervention()


def test_tree_balanced_sampler_balances_output():
    model = equality_model()
    n = 600
    uniform = sum(model.run_forward(model.sample_input())["O"] for _ in range(n)) / n
    assert uniform > 0.65  # uniform inputs are skewed towards O=True (26/36)
    balanced = sum(model.run_forward(model.sample_input_tree_balanced())["O"] for _ in range(n)) / n
    assert 0.42 < balanced < 0.58
    for value in (True, False):
        for _ in range(20):
            inp = model.sample_input_tree_balanced("WX", value)
            assert model.run_forward(inp)["WX"] is value
    # no equivalence tables: falls back to rejection sampling, still balanced
    model.equiv_classes = {}
    balanced = sum(model.run_forward(model.sample_input_tree_balanced())["O"] for _ in range(n)) / n
    assert 0.42 < balanced < 0.58


def test_tree_balanced_unreachable_value():
    model = CausalModel(
        ["a", "o"], {"a": [0, 1], "o": [0, 1, 99]}, {"a": [], "o": ["a"]},
        {"a": lambda: 0, "o": lambda a: a},
    )
    outs = {model.run_forward(model.sample_input_tree_balanced())["o"] for _ in range(50)}
    assert outs == {0, 1}
    with pytest.raises(ValueError, match="99"):
        model.sample_input_tree_balanced(output_var_value=99)


# ---------------------------------------------------------------------------
# live paths and filters
# ---------------------------------------------------------------------------


def as_set(paths):
    return {n: {tuple(p) for p in found} for n, found in paths.items()}


def test_find_live_paths_on_chain():
    model = chain_model()
    paths = model.find_live_paths({"A": False, "D": True})
    assert as_set(paths) == {
        2: {("A", "B"), ("B", "C"), ("D", "C")},
        3: {("A", "B", "C")},
        4: set(),
    }
    # with D = False, C is stuck at False: B -> C is dead
    paths = model.find_live_paths({"A": False, "D": False})
    assert as_set(paths) == {2: {("A", "B"), ("D", "C")}, 3: set()}
    # an intervened variable cannot be changed by its parents
    paths = model.find_live_paths({"A": False, "D": True, "B": True})
    assert as_set(paths) == {2: {("B", "C"), ("D", "C")}, 3: set()}


def test_filters():
    model = chain_model()
    a_to_c = model.get_specific_path_filter("A", "C")
    assert a_to_c({"A": False, "D": True})
    assert not a_to_c({"A": False, "D": False})
    assert a_to_c(model.run_forward({"A": True, "D": True}))
    maxlen3 = model.get_path_maxlen_filter([3])
    assert maxlen3({"A": True, "D": True})
    assert not maxlen3({"A": True, "D": False})
    partial = model.get_partial_filter({"C": True})
    assert partial({"A": False, "D": True})  # input setting is completed
    assert not partial(model.run_forward({"A": True, "D": True}))
    data = model.generate_factual_dataset(30, filter=partial, return_tensors=False)
    assert all(ex["labels"]["C"] is True for ex in data)


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------


def test_factual_dataset():
    model = equality_model()
    data = model.generate_factual_dataset(25)
    assert len(data) == 25
    for ex in data:
        assert ex["input_ids"].shape == (4 * DIM,)
        assert ex["labels"].shape == (1,)
        inputs = decode_inputs(ex["input_ids"])
        expected = (inputs["W"] == inputs["X"]) == (inputs["Y"] == inputs["Z"])
        assert ex["labels"].item() == float(expected)
    raw = model.generate_factual_dataset(3, return_tensors=False)
    assert set(raw[0]["input_ids"]) == {"W", "X", "Y", "Z"}
    assert raw[0]["labels"] == model.run_forward(raw[0]["input_ids"])


def intervention_id(intervention):
    if "WX" in intervention and "YZ" in intervention:
        return 2
    if "WX" in intervention:
        return 0
    if "YZ" in intervention:
        return 1
    raise AssertionError(intervention)


def test_counterfactual_dataset_with_default_samplers():
    model = equality_model()
    size, batch_size = 62, 8
    data = model.generate_counterfactual_dataset(size, intervention_id, batch_size)
    assert len(data) == size
    ids = [ex["intervention_id"].item() for ex in data]
    assert set(ids) <= {0, 1, 2} and len(set(ids)) > 1
    for start in range(0, size, batch_size):  # one intervention per batch
        assert len(set(ids[start:start + batch_size])) == 1
    for ex in data:
        assert ex["input_ids"].shape == (4 * DIM,)
        assert ex["source_input_ids"].shape == (2, 4 * DIM)
        assert ex["labels"].shape == (1,) and ex["base_labels"].shape == (1,)
        assert ex["intervention_id"].shape == (1,)
        base = decode_inputs(ex["input_ids"])
        base_wx = base["W"] == base["X"]
        base_yz = base["Y"] == base["Z"]
        assert ex["base_labels"].item() == float(base_wx == base_yz)
        src0 = decode_inputs(ex["source_input_ids"][0])
        src1 = decode_inputs(ex["source_input_ids"][1])
        wx, yz = base_wx, base_yz
        iid = ex["intervention_id"].item()
        if iid == 0:
            wx = src0["W"] == src0["X"]
            assert torch.all(ex["source_input_ids"][1] == 0)
        elif iid == 1:
            yz = src0["Y"] == src0["Z"]
            assert torch.all(ex["source_input_ids"][1] == 0)
        else:
            wx = src0["W"] == src0["X"]
            yz = src1["Y"] == src1["Z"]
        assert ex["labels"].item() == float(wx == yz)


def test_counterfactual_dataset_tree_balanced_sampler_and_device():
    model = equality_model()
    data = model.generate_counterfactual_dataset(
        40, intervention_id, 4, sampler=model.sample_input_tree_balanced, device="cpu"
    )
    assert len(data) == 40
    labels = torch.cat([ex["labels"] for ex in data])
    assert 0 < labels.sum().item() < 40
    assert all(ex["input_ids"].device.type == "cpu" for ex in data)


def test_counterfactual_dataset_source_settings_and_plain_sampler():
    model = arithmetic_model()
    fixed_source = {"a": 2, "b": 2, "c": 0}
    data = model.generate_counterfactual_dataset(
        5, 7, 2,
        sampler=lambda: {"a": 0, "b": 0, "c": 1},
        intervention_sampler=lambda: {"s": fixed_source},
    )
    for ex in data:
        assert ex["intervention_id"].tolist() == [7]
        assert ex["source_input_ids"].tolist() == [[2.0, 2.0, 0.0]]
        assert ex["labels"].item() == 5.0 and ex["base_labels"].item() == 1.0
    # a zero-argument sampler gets sources by rejection sampling
    state = {"n": 0}

    def plain_sampler():
        state["n"] += 1
        return {"a": random.choice([0, 1, 2]), "b": random.choice([0, 1, 2]), "c": 0}

    data = model.generate_counterfactual_dataset(
        10, lambda iv: 0, 5, sampler=plain_sampler, intervention_sampler=lambda: {"s": 4}
    )
    for ex in data:
        assert ex["source_input_ids"][0, :2].sum().item() == 4.0
        base = ex["input_ids"].tolist()
        assert ex["labels"].item() == 4.0 + base[2]


def test_pyvene_style_unit_model():
    model = CausalModel(
        ["A", "B", "C"],
        {"A": [False, True], "B": [False, True], "C": [False, True]},
        {"A": [], "B": [], "C": ["A", "B"]},
        {"A": lambda: True, "B": lambda: True, "C": lambda a, b: a and b},
    )
    assert model.equiv_classes == {
        "C": {
            False: [{"A": False, "B": False}, {"A": False, "B": True}, {"A": True, "B": False}],
            True: [{"A": True, "B": True}],
        }
    }
    assert model.run_interchange({"A": False, "B": False}, {"C": {"A": True, "B": True}})["C"] is True

    data = model.generate_factual_dataset(4, sampler=lambda: {"A": False, "B": False})
    X = torch.stack([ex["input_ids"] for ex in data])
    y = torch.stack([ex["labels"] for ex in data])
    assert X.shape == (4, 2) and y.shape == (4, 1)

    def sampler(*args, **kwargs):
        if kwargs.get("output_var", None):
            return {"A": True, "B": True}
        return {"A": True, "B": False}

    data = model.generate_counterfactual_dataset(
        4, lambda *a, **k: 0, 1, sampler=sampler,
        intervention_sampler=lambda *a, **k: {"B": True}, return_tensors=False,
    )
    ex = data[0]
    assert ex["input_ids"] == {"A": True, "B": False}
    assert ex["source_input_ids"][0]["B"] is True
    assert ex["intervention_id"] == [0]
    assert ex["base_labels"]["C"] is False and ex["labels"]["C"] is True


def test_constructor_encoders_used_by_generators():
    variables, values, parents, functions = equality_spec()
    model = CausalModel(
        variables, values, parents, functions,
        input_function=lambda s: torch.tensor([float(s["W"] == s["X"]), float(s["Y"] == s["Z"])]),
        output_function=lambda s: torch.tensor([int(s["O"])]),
    )
    data = model.generate_factual_dataset(5)
    assert data[0]["input_ids"].shape == (2,)
    assert data[0]["labels"].dtype == torch.int64
    cf = model.generate_counterfactual_dataset(4, intervention_id, 2)
    assert cf[0]["source_input_ids"].shape == (2, 2)
    # per-call override wins
    data = model.generate_factual_dataset(2, input_function=model.input_to_tensor)
    assert data[0]["input_ids"].shape == (4 * DIM,)


# ---------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------


def test_print_structure_text(capsys):
    model = equality_model()
    text = model.print_structure(as_text=True, show=False)
    assert "t=1: WX <- (W, X); YZ <- (Y, Z)" in text
    assert capsys.readouterr().out == ""
    text = model.print_structure(as_text=True)  # default: return, do not print
    assert "t=1: WX <- (W, X); YZ <- (Y, Z)" in text
    assert capsys.readouterr().out == ""
    text = model.print_setting(model.run_forward(), display={"W": False}, as_text=True)
    assert "WX: True" in text and "W <-" not in text
    assert capsys.readouterr().out == ""
    shown = model.print_setting(model.run_forward(), display={"W": False}, as_text=True, show=True)
    assert shown == text
    assert capsys.readouterr().out.strip() == text


def test_print_structure_without_matplotlib_returns_text(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    model = equality_model()
    text = model.print_structure()
    assert isinstance(text, str) and "O <- (WX, YZ)" in text
    assert capsys.readouterr().out == ""


def test_print_structure_figure():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = equality_model()
    fig = model.print_structure()
    assert isinstance(fig, Figure)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"W", "WX", "O"} <= labels
    fig = model.print_setting(model.run_forward())
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert "O: True" in labels
