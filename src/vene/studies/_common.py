"""Shared helpers of the case studies: loading, output files, timing."""
from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)


def add_common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--model", default=None,
                   help="local model directory, .gguf file or cached Hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=out, help=f"output directory (default: {out})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the dataset and training (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dpi", type=int, default=130, help="figure resolution (default: 130)")


def load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    import torch

    from ..models.embedded import EMBEDDED_MODEL_ID, load_model

    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    model, tok = load_model(args.model)
    if tok is None:
        raise SystemExit("this study needs a model with a tokenizer")
    return model, tok, args.model or EMBEDDED_MODEL_ID


def write_outputs(out_dir: str | Path, stem: str, data: dict, fig: Any, dpi: int = 130) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.json", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    fig.savefig(out / f"{stem}.png", dpi=dpi)
    return [str(out / f"{stem}.png"), str(out / f"{stem}.json")]


class Timer:
    """Wall-clock seconds per named step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(time.perf_counter() - t, 2)
            logger.info("%s: %.1f s", name, self.times[name])

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def token_id(tok: Any, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens; the studies need single-token words.")
    return int(ids[0])
