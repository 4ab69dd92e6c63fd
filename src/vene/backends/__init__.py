"""Execution backends other than vene's own hooks.

* :mod:`vene.backends.nnsight_model` -- :class:`IntervenableNdifModel`: the same configurations
  run through an nnsight model's tracing API, locally or on NDIF (``remote=True``);
* :mod:`vene.backends.nnsight_exec` -- what runs inside those traces (on the NDIF server for a
  remote call): vene's ops applied to the values nnsight's Envoys hand over.

Neither module imports nnsight at import time: ``import vene`` works without the extra.
"""
