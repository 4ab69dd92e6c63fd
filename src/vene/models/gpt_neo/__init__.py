"""pyvene's package path ``pyvene.models.gpt_neo``."""
