"""vene's built-in GRU (``vene.models.gru``), laid out as pyvene's ``pyvene.models.gru`` package.

The model lives in :mod:`.modelings_gru`; :mod:`.modelings_intervenable_gru` re-exports the
factories under pyvene's module path.
"""
from .modelings_gru import *  # noqa: F401,F403
from .modelings_gru import __all__  # noqa: F401
