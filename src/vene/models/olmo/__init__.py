"""pyvene's package path ``pyvene.models.olmo``."""
