"""pyvene's package path ``pyvene.models.backpack_gpt2``."""
