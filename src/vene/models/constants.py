"""Hook-kind constants used in pyvene-style ``type_to_module_mapping`` registrations."""
from ..components import CONST_INPUT_HOOK, CONST_OUTPUT_HOOK

__all__ = ["CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK"]
