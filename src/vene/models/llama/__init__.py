"""pyvene's package path ``pyvene.models.llama``."""
