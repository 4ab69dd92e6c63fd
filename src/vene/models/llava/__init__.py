"""pyvene's package path ``pyvene.models.llava``."""
