"""pyvene's package path ``pyvene.models.gpt2``."""
