"""vene's built-in MLP (``vene.models.mlp``), laid out as pyvene's ``pyvene.models.mlp`` package.

The model lives in :mod:`.modelings_mlp`; :mod:`.modelings_intervenable_mlp` re-exports the
factory under pyvene's module path.
"""
from .modelings_mlp import *  # noqa: F401,F403
from .modelings_mlp import __all__  # noqa: F401
