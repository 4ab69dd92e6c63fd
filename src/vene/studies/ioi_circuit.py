"""Indirect object identification (Wang et al. 2022) on SmolLM2.

Prompts ``"When Mary and John went to the store, John gave a drink to"`` -> `` Mary`` (the
indirect object, IO; John is the subject, S). The corrupted prompt repeats the other name
(``"..., Mary gave a drink to"``), which flips the answer. Metric: ``logit[IO] - logit[S]`` of
the clean prompt's names, averaged over the prompts.

Steps (all on one batch of prompts of equal length):

1. **names**: keep the candidate names for which the model's IO-vs-S logit difference is
   largest (names it handles well);
2. **head attribution patching** (all heads, end position; two forward and one backward pass);
3. **head activation patching**, exact, at the end position (every head of every layer, clean
   head output into the corrupted run), and the rank correlation of 2 with 3;
4. **direct logit attribution** of every head on the clean prompts;
5. **path patching** of the top heads' direct path to the logits (the seed README's
   ``path_patching_config``: the sender from the clean run, everything after it frozen to the
   corrupted run).
"""
from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import torch
from torch import nn

from ..analysis.attribution import attribution_patching, compare_with_patching
from ..analysis.lens import direct_logit_attribution
from ..analysis.patching import activation_patching
from ..analysis.path_patching import path_patching
from ._common import Timer

logger = logging.getLogger(__name__)

CANDIDATES = ["Mary", "John", "James", "Sarah", "Michael", "Emma", "David", "Anna", "Robert", "Linda", "William",
              "Lisa", "Thomas", "Emily", "Daniel", "Paul", "Laura", "Mark", "Susan", "George", "Peter", "Kate", "Tom",
              "Alice", "Jack", "Rachel", "Kevin", "Helen"]
PLACES = ["store", "park", "office", "school", "market", "beach"]
OBJECTS = ["drink", "ball", "book", "gift", "letter", "bag"]
TEMPLATE = "When {a} and {b} went to the {place}, {s} gave a {obj} to"


def _single(tok: Any, words: Sequence[str]) -> list[str]:
    return [w for w in words if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def _tid(tok: Any, word: str) -> int:
    return int(tok(" " + word, add_special_tokens=False)["input_ids"][0])


def make_prompts(names: Sequence[str], places: Sequence[str], objects: Sequence[str], n: int, rng: random.Random) -> list[dict]:
    """``n`` prompts, half ABBA (IO first) and half BABA (S first)."""
    out = []
    for i in range(n):
        io, s = rng.sample(list(names), 2)
        place, obj = rng.choice(list(places)), rng.choice(list(objects))
        a, b = (io, s) if i % 2 == 0 else (s, io)
        out.append({"io": io, "s": s, "clean": TEMPLATE.format(a=a, b=b, place=place, s=s, obj=obj),
                    "corrupted": TEMPLATE.format(a=a, b=b, place=place, s=io, obj=obj)})
    return out


def _ids(tok: Any, texts: Sequence[str]) -> torch.Tensor:
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("IOI prompts must have the same number of tokens; use single-token names, places and objects.")
    return torch.tensor(rows)


def select_names(model: nn.Module, tok: Any, k: int, rng: random.Random) -> tuple[list[str], dict[str, float]]:
    """Score every candidate name as the IO (mean logit diff over a few prompts); keep the top ``k``."""
    names = _single(tok, CANDIDATES)
    places, objects = _single(tok, PLACES), _single(tok, OBJECTS)
    prompts = []
    for io in names:
        for j in range(2):
            s = rng.choice([x for x in names if x != io])
            a, b = (io, s) if j == 0 else (s, io)
            prompts.append((io, s, TEMPLATE.format(a=a, b=b, place=rng.choice(places), s=s, obj=rng.choice(objects))))
    ids = _ids(tok, [p[2] for p in prompts])
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
    diff = logits[torch.arange(len(prompts)), torch.tensor([_tid(tok, p[0]) for p in prompts])] - \
        logits[torch.arange(len(prompts)), torch.tensor([_tid(tok, p[1]) for p in prompts])]
    score: dict[str, float] = {}
    for (io, _, _), d in zip(prompts, diff.tolist()):
        score[io] = score.get(io, 0.0) + d / 2
    ranked = sorted(score, key=score.__getitem__, reverse=True)
    return ranked[:k], score


def run_study(model: nn.Module, tok: Any, n_prompts: int = 8, n_names: int = 10, top_heads: int = 10,
              layers: Sequence[int] | None = None, seed: int = 0, progress: bool = True) -> tuple[dict, Any]:
    """The IOI analysis; returns (JSON-able data, figure). ``layers``: the layers whose heads
    are patched (default: all)."""
    timer = Timer()
    rng = random.Random(seed)
    with timer.step("select names"):
        names, name_scores = select_names(model, tok, n_names, rng)
    prompts = make_prompts(names, _single(tok, PLACES), _single(tok, OBJECTS), n_prompts, rng)
    clean = {"input_ids": _ids(tok, [p["clean"] for p in prompts])}
    corrupted = {"input_ids": _ids(tok, [p["corrupted"] for p in prompts])}
    io = torch.tensor([_tid(tok, p["io"]) for p in prompts])
    s = torch.tensor([_tid(tok, p["s"]) for p in prompts])
    rows = torch.arange(len(prompts))

    def metric(logits: torch.Tensor) -> torch.Tensor:  # (batch, vocab) -> (batch,)
        return logits[rows, io] - logits[rows, s]

    end = clean["input_ids"].shape[1] - 1
    with timer.step("attribution patching (heads)"):
        attr = attribution_patching(model, clean, corrupted, metric, components=["head_attention_value_output"],
                                    layers=layers, positions=[end])
    with timer.step("activation patching (heads)"):
        exact = activation_patching(model, clean, corrupted, metric, components=["head_attention_value_output"],
                                    layers=layers, positions=[end], progress=progress)
    agree = compare_with_patching(attr, exact)["head_attention_value_output"]
    with timer.step("direct logit attribution"):
        dla = direct_logit_attribution(model, clean, io, s)
    patched = exact.scores["head_attention_value_output"][:, 0, :]  # (layers, heads)
    clean_ld, corr_ld = exact.clean_metric, exact.corrupted_metric
    effect = (patched - corr_ld) / (clean_ld - corr_ld)  # fraction of the logit difference restored
    order = effect.abs().flatten().argsort(descending=True)[:top_heads].tolist()
    n_heads = effect.shape[1]
    layer_list = list(exact.layers)
    top = [(layer_list[i // n_heads], i % n_heads) for i in order]
    with timer.step("path patching (top heads -> logits)"):
        pp = path_patching(model, corrupted, clean, metric, senders=top, progress=progress)
    path_effect = (pp.values - corr_ld) / (clean_ld - corr_ld)  # (all layers, heads)
    row = {l: i for i, l in enumerate(layer_list)}
    heads = []
    for l, h in top:
        heads.append({"layer": l, "head": h, "activation_patching": round(float(effect[row[l], h]), 4),
                      "path_patching_direct": round(float(path_effect[l, h]), 4),
                      "attribution": round(float(attr["head_attention_value_output"].values[row[l], 0, h] / (clean_ld - corr_ld)), 4),
                      "direct_logit_attribution": round(float(dla["heads"].values[l, h]), 4)})
    out = {
        "study": "ioi", "names": names, "name_scores": {k: round(v, 3) for k, v in name_scores.items()},
        "prompts": prompts, "logit_diff": {"clean": clean_ld, "corrupted": corr_ld},
        "clean_accuracy": float((metric(_last_logits(model, clean)) > 0).float().mean()),
        "heads_that_matter": heads,
        "attribution_vs_activation_patching": agree,
        "activation_patching_restored": effect.tolist(),
        "attribution_restored": (attr["head_attention_value_output"].values[:, 0, :] / (clean_ld - corr_ld)).tolist(),
        "layers": layer_list, "dla_heads": dla["heads"].values[layer_list].tolist(),
        "dla_components": dict(zip(dla["components"].labels["component"], dla["components"].values.tolist())),
        "dla_logit_diff": dla.meta["logit_diff"],
        "timings_s": {}, "sweep_strategy": exact.extra.get("strategy"),
    }
    out["timings_s"] = dict(timer.times, total=timer.total())
    return out, plot_ioi(out)


def _last_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, logits_to_keep=1).logits[:, -1].float()


def plot_ioi(out: dict):
    """Four panels: exact head patching, attribution patching, per-head DLA (layers x heads), and
    the top heads' activation vs direct-path patching."""
    from ..analysis.plotting import _figure, draw_heatmap

    ap = torch.tensor(out["activation_patching_restored"])
    at = torch.tensor(out["attribution_restored"])
    dl = torch.tensor(out["dla_heads"])
    n_layers, n_heads = ap.shape
    layer_labels = [str(l) for l in out.get("layers", range(n_layers))]
    fig = _figure((16.0, max(4.0, 0.2 * n_layers + 1.5)))
    lim = float(max(ap.abs().max(), at.abs().max())) or 1.0
    for k, (grid, title, label) in enumerate([
        (ap, "activation patching (end position)", "fraction restored"),
        (at, f"attribution patching (Spearman {out['attribution_vs_activation_patching']['spearman']:.2f})", "fraction restored"),
        (dl, "direct logit attribution (clean)", "logit diff"),
    ]):
        ax = fig.add_subplot(1, 4, k + 1)
        m = float(grid.abs().max()) or 1.0
        v = lim if k < 2 else m
        draw_heatmap(ax, grid, layer_labels, [str(h) for h in range(n_heads)], title=title,
                     xlabel="head", ylabel="layer" if k == 0 else None, cmap="RdBu_r", vmin=-v, vmax=v, colorbar_label=label)
    ax = fig.add_subplot(1, 4, 4)
    heads = out["heads_that_matter"]
    labels = [f"L{h['layer']}H{h['head']}" for h in heads]
    x = torch.arange(len(heads)).float()
    ax.barh(x - 0.2, [h["activation_patching"] for h in heads], height=0.4, label="activation patching", color="#2166ac")
    ax.barh(x + 0.2, [h["path_patching_direct"] for h in heads], height=0.4, label="path patching -> logits", color="#b2182b")
    ax.set_yticks(x.tolist())
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("fraction of logit diff restored")
    ax.set_title("top heads", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"IOI on SmolLM2: logit diff clean {out['logit_diff']['clean']:.2f}, corrupted {out['logit_diff']['corrupted']:.2f}",
                 fontsize=11)
    return fig
