"""``python -m vene ...`` runs the ``vene`` command."""
import sys

from .cli import main

sys.exit(main())
