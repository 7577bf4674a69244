"""Reading and writing adapter checkpoints."""

from ..core.checkpoint import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, detect_format, read_checkpoint
from . import hub as _hub  # noqa: F401  (registers the hub:// source scheme)

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "detect_format", "read_checkpoint"]
