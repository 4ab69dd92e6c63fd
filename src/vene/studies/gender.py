"""Linear probes vs 1-d DAS for gender, per layer (the pyvene paper's Fig. 3, on SmolLM2).

Prompts ``"<prefix>, <name> said that"``: the model should continue with `` he`` or `` she``.
Per layer and at two positions (the name, and the last token):

* **probe**: logistic regression on the residual stream (``block_output``), trained on some
  names and tested on held-out names -- does the layer *encode* gender linearly?
* **DAS**: a 1-d rotated-subspace interchange (:class:`vene.LowRankRotatedSpaceIntervention`,
  rank 1) trained so that swapping the direction in from a prompt with a name of the other
  gender makes the model say *that* prompt's pronoun; interchange-intervention accuracy (IIA)
  on held-out names -- is the direction *used* by the model?

The paper's point: probes find gender almost everywhere, interventions only where the model
uses it. Only prompts the model answers correctly (he vs she) are kept.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import torch
from torch import nn

from ..analysis.cache import run_with_cache
from ..analysis.causal_trace import n_layers_of
from ..components import get_module, resolve_site
from ..hooks import HookSession
from ..interventions import LowRankRotatedSpaceIntervention
from ._common import Timer, token_id

logger = logging.getLogger(__name__)

MALE = ["John", "James", "Michael", "David", "Robert", "William", "Thomas", "Daniel", "Paul", "Mark",
        "George", "Peter", "Tom", "Jack", "Kevin", "Brian", "Steven", "Richard", "Charles", "Chris"]
FEMALE = ["Mary", "Sarah", "Emma", "Anna", "Linda", "Lisa", "Emily", "Jessica", "Laura", "Susan",
          "Karen", "Kate", "Alice", "Rachel", "Helen", "Amy", "Julia", "Nancy", "Sophie", "Maria"]
PREFIXES = ["After the meeting", "Later that day", "At the party", "After the game"]
TEMPLATE = "{prefix}, {name} said that"


def build_dataset(tok: Any, prefixes: Sequence[str] = PREFIXES) -> list[dict]:
    """One example per (prefix, name): ids, name position, label (0 male, 1 female)."""
    data = []
    for t, prefix in enumerate(prefixes):
        for label, names in ((0, MALE), (1, FEMALE)):
            for name in names:
                text = TEMPLATE.format(prefix=prefix, name=name)
                ids = tok(text, add_special_tokens=False)["input_ids"]
                head = tok(f"{prefix},", add_special_tokens=False)["input_ids"]
                if len(tok(" " + name, add_special_tokens=False)["input_ids"]) != 1 or ids[: len(head)] != head:
                    logger.info("skipping %r: the name is not one token after the prefix", text)
                    continue
                data.append({"text": text, "ids": ids, "name_pos": len(head), "label": label, "name": name, "template": t})
    return data


def _groups(data: list[dict]) -> dict[tuple, list[int]]:
    """Examples sharing a template have the same length and name position."""
    out: dict[tuple, list[int]] = {}
    for i, ex in enumerate(data):
        out.setdefault((ex["template"], len(ex["ids"]), ex["name_pos"]), []).append(i)
    return out


def _cache_arg(model: nn.Module) -> str:
    """The keyword a transformers model takes its KV cache under (found from its signature:
    ``cache`` on recent releases, ``past_key_values`` before)."""
    from ..analysis.stepping import find_cache_parameter

    return find_cache_parameter(model.forward) or "past_key_values"


def _pronoun_logits(model: nn.Module, ids: torch.Tensor, he: int, she: int, past: Any = None) -> torch.Tensor:
    kwargs = {_cache_arg(model): past, "use_cache": True} if past is not None else {}
    logits = model(input_ids=ids, logits_to_keep=1, **kwargs).logits[:, -1]
    return torch.stack([logits[:, he], logits[:, she]], -1).float()


class DASBatch:
    """Base prompts, source activations and counterfactual labels for an interchange at
    ``pos``. Positions before ``pos`` are unchanged by the intervention, so their keys and values
    are computed once (a KV cache of the prefix) and each step runs positions ``pos..`` only."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, pos: int, src: dict[int, torch.Tensor], target: torch.Tensor) -> None:
        self.ids, self.pos, self.src, self.target = ids, pos, src, target
        self.past = None
        if pos > 0:
            with torch.no_grad():
                out = model(input_ids=ids[:, :pos], use_cache=True, logits_to_keep=1)
            self.past = getattr(out, "cache", None) or out.past_key_values

    def logits(self, model: nn.Module, iv: nn.Module, layer: int, he: int, she: int) -> torch.Tensor:
        """(batch, 2) logits of he/she with the interchange at (layer, pos)."""
        site = resolve_site(model, "block_output", layer)
        src = self.src[layer]

        def setter(mod, t, i, args):
            t = t.clone()
            t[:, 0] = iv(t[:, 0], src)  # the step's first position is ``pos``
            return t

        try:
            with HookSession(model) as session:
                session.add(get_module(model, site.module_path), site.io, setter)
                return _pronoun_logits(model, self.ids[:, self.pos:], he, she, self.past)
        finally:
            if self.past is not None:
                self._restore_prefix()

    def _restore_prefix(self) -> None:
        """Drop the step's keys/values and cut the prefix loose from the step's graph."""
        assert self.past is not None  # only called when there is a prefix cache
        self.past.crop(-(self.ids.shape[1] - self.pos))
        for layer in getattr(self.past, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    setattr(layer, name, t.detach())
        for name in ("key_cache", "value_cache"):  # older transformers
            lst = getattr(self.past, name, None)
            if isinstance(lst, list):
                lst[:] = [t.detach() for t in lst]


def fit_probe(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor, l2: float = 1e-2) -> float:
    """Logistic regression (standardised features, L2, LBFGS); test accuracy."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=100, line_search_fn="strong_wolfe")
    yt = y_tr.float()

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(a @ w + c, yt) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((b @ w + c > 0).long() == y_te).float().mean())


def train_das(iv: LowRankRotatedSpaceIntervention, model: nn.Module, layer: int, batches: Sequence[DASBatch],
              he: int, she: int, steps: int, lr: float) -> None:
    """Train a rank-1 rotated interchange ``iv`` at ``layer`` of ``block_output``: base rows take
    the source activation's component along the learned direction; loss: cross-entropy of the
    source's pronoun (he/she). Only layers from ``layer`` on are differentiated."""
    params = [p for p in iv.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        for b in batches:
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(b.logits(model, iv, layer, he, she), b.target)
                opt.zero_grad()
                # gradients of the intervention only: the model's own weights (left trainable by
                # the caller, as a plain HF model is) get none, which also skips their backward
                loss.backward(inputs=params)
                opt.step()


def _das_batches(model: nn.Module, pairs: list[tuple[dict, dict]], which: str, k: int, layers: Sequence[int]) -> list[DASBatch]:
    groups: dict[tuple, list] = {}
    for b, s in pairs:
        groups.setdefault((len(b["ids"]), b["name_pos"]), []).append((b, s))
    out = []
    for (n, npos), ps in groups.items():
        pos = npos if which == "name" else n - 1
        src = {l: torch.stack([s["acts"][l][k] for _, s in ps]) for l in layers}
        out.append(DASBatch(model, torch.tensor([b["ids"] for b, _ in ps]), pos, src, torch.tensor([s["label"] for _, s in ps])))
    return out


def run_study(model: nn.Module, tok: Any, layers: Sequence[int] | None = None, steps: int = 5, lr: float = 0.02,
              init: str = "mean-diff", n_train_names: int = 10, max_pairs: int = 48, seed: int = 0,
              progress: bool = True) -> tuple[dict, Any]:
    """Probe accuracy and DAS IIA per layer at the name and last positions; returns (data, figure).

    ``layers``: default every fourth layer and the last. ``init``: ``"mean-diff"`` starts each
    DAS direction at the difference of the two classes' mean activations on the train split
    (so that a few optimiser steps on CPU suffice), ``"random"`` at a random unit vector.
    ``steps`` optimiser steps of Adam (``lr``) on at most ``max_pairs`` train pairs; IIA on at
    most ``max_pairs`` pairs of held-out names."""
    if init not in ("mean-diff", "random"):
        raise ValueError(f"init must be 'mean-diff' or 'random', not {init!r}")
    from tqdm.auto import tqdm

    timer = Timer()
    he, she = token_id(tok, " he"), token_id(tok, " she")
    data = build_dataset(tok)
    n_layers = n_layers_of(model)
    layer_list = (list(range(0, n_layers, 4)) + ([n_layers - 1] if (n_layers - 1) % 4 else []) if layers is None
                  else [int(l) % n_layers for l in layers])
    with timer.step("behaviour + cache"), torch.no_grad():
        for (_, _, npos), idx in _groups(data).items():
            ids = torch.tensor([data[i]["ids"] for i in idx])
            cache = run_with_cache(model, {"input_ids": ids, "logits_to_keep": 1}, ["block_output"], layers=layer_list,
                                   positions=[npos, -1])
            lg = cache.output.logits[:, -1]
            pred = (lg[:, she] > lg[:, he]).long()
            for j, i in enumerate(idx):
                data[i]["correct"] = bool(pred[j] == data[i]["label"])
                data[i]["acts"] = {l: cache["block_output", l][j] for l in layer_list}  # (2, d)
    model_acc = sum(ex["correct"] for ex in data) / len(data)
    data = [ex for ex in data if ex["correct"]]
    rng = random.Random(seed)
    names_m, names_f = MALE[:], FEMALE[:]
    rng.shuffle(names_m)
    rng.shuffle(names_f)
    train_names = set(names_m[:n_train_names] + names_f[:n_train_names])
    train = [ex for ex in data if ex["name"] in train_names]
    test = [ex for ex in data if ex["name"] not in train_names]
    logger.info("%d examples kept (model accuracy %.2f): %d train, %d test", len(data), model_acc, len(train), len(test))

    def pairs(split: list[dict]) -> list[tuple[dict, dict]]:
        out = []
        for ex in split:
            others = [o for o in split if o["template"] == ex["template"] and o["label"] != ex["label"]]
            if others:
                out.append((ex, rng.choice(others)))
        return out

    tr_pairs, te_pairs = pairs(train), pairs(test)
    tr_pairs = rng.sample(tr_pairs, min(max_pairs, len(tr_pairs)))
    te_pairs = rng.sample(te_pairs, min(max_pairs, len(te_pairs)))
    results: dict[str, dict[str, list[float]]] = {"name": {"probe": [], "das": []}, "last": {"probe": [], "das": []}}
    y_tr = torch.tensor([ex["label"] for ex in train])
    y_te = torch.tensor([ex["label"] for ex in test])
    with timer.step("probes"):
        for l in layer_list:
            for k, which in enumerate(("name", "last")):
                x_tr = torch.stack([ex["acts"][l][k] for ex in train]).float()
                x_te = torch.stack([ex["acts"][l][k] for ex in test]).float()
                results[which]["probe"].append(fit_probe(x_tr, y_tr, x_te, y_te))
    bar = tqdm(total=2 * len(layer_list), disable=not progress, desc="DAS (1-d) per layer")
    with timer.step("das"):
        for k, which in enumerate(("name", "last")):
            train_b = _das_batches(model, tr_pairs, which, k, layer_list)
            test_b = _das_batches(model, te_pairs, which, k, layer_list)
            for l in layer_list:
                torch.manual_seed(seed)
                iv = LowRankRotatedSpaceIntervention(embed_dim=data[0]["acts"][l].shape[-1], low_rank_dimension=1)
                if init == "mean-diff":  # start from the class-mean difference of the train split
                    x = torch.stack([ex["acts"][l][k] for ex in train]).float()
                    d = x[y_tr == 1].mean(0) - x[y_tr == 0].mean(0)
                    with torch.no_grad():
                        iv.rotate_layer.weight = (d / d.norm()).unsqueeze(1)
                train_das(iv, model, l, train_b, he, she, steps, lr)
                logger.info("DAS at layer %d, %s token: trained", l, which)
                hits = total = 0
                with torch.no_grad():
                    for b in test_b:
                        hits += int((b.logits(model, iv, l, he, she).argmax(-1) == b.target).sum())
                        total += len(b.target)
                results[which]["das"].append(hits / max(1, total))
                bar.update(1)
    bar.close()
    out = {
        "study": "probe-vs-das", "layers": layer_list, "results": results, "model_accuracy": model_acc,
        "examples": {"kept": len(data), "train": len(train), "test": len(test), "train_pairs": len(tr_pairs), "test_pairs": len(te_pairs)},
        "settings": {"steps": steps, "lr": lr, "init": init, "max_pairs": max_pairs,
                     "templates": [TEMPLATE.format(prefix=p, name="<name>") for p in PREFIXES],
                     "held_out_names": sorted(set(MALE + FEMALE) - train_names)},
        "timings_s": dict(timer.times, total=timer.total()),
    }
    return out, plot_probe_vs_das(out)


def plot_probe_vs_das(out: dict):
    """Fig. 3 style: probe accuracy and DAS IIA by layer, one panel per position."""
    from ..analysis.plotting import _figure

    fig = _figure((9.0, 3.4))
    for k, which in enumerate(("name", "last")):
        ax = fig.add_subplot(1, 2, k + 1)
        r = out["results"][which]
        ax.plot(out["layers"], r["probe"], "o-", label="linear probe accuracy", color="#1b9e77")
        ax.plot(out["layers"], r["das"], "s-", label="DAS (1-d) IIA", color="#d95f02")
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("layer")
        ax.set_title(f"gender at the {'name' if which == 'name' else 'last'} token", fontsize=10)
        if k == 0:
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=8, loc="lower left")
    return fig
