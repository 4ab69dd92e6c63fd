"""pyvene's package path ``pyvene.models.blip``."""
