"""Case studies on the embedded SmolLM2-135M-Instruct, each a CLI command and an example script.

* :mod:`vene.studies.gender` (command ``vene probe-vs-das``, :mod:`vene.studies.probe_vs_das`):
  linear probes vs 1-d DAS for gender, per layer, at the name and last positions (the pyvene
  paper's Fig. 3).
* :mod:`vene.studies.ioi_circuit` (command ``vene ioi``, :mod:`vene.studies.ioi`): indirect object
  identification: logit difference, head-level attribution, activation and path patching,
  direct logit attribution.

Each study module has ``run_study(model, tokenizer, ...)`` returning a JSON-able dict and a
matplotlib ``Figure``; the command modules hold ``add_parser(subparsers)`` / ``run(args)`` and
import nothing heavy until a command runs.
"""
from __future__ import annotations

__all__ = ["gender", "ioi", "ioi_circuit", "probe_vs_das"]
