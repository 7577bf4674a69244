"""adapterkit: parameter-efficient, modular transfer learning with adapters.

Adapters are named, composable, mergeable and shareable objects attached to any
``torch.nn.Module``::

    import adapterkit as ak
    kit = ak.AdapterKit(model)
    kit.add("sst2", ak.LoRA(r=8, targets=("attn.q", "attn.v")))
    kit.train("sst2", train_also=("classifier",))
"""

__version__ = "0.1.0"

from .errors import (
    AdapterError,
    AdapterNameError,
    ConfigError,
    LoadError,
    NotMergeableError,
    TargetError,
)
from .kit import AdapterKit
from .layouts import LAYOUTS, ROLES, Layout
from .methods import methods
from .methods.bottleneck import Bottleneck
from .methods.dora import DoRA
from .methods.ia3 import IA3
from .methods.lora import LoRA
from .methods.vera import VeRA

__all__ = [
    "IA3", "LAYOUTS", "ROLES", "AdapterError", "AdapterKit", "AdapterNameError", "Bottleneck",
    "ConfigError", "DoRA", "Layout", "LoRA", "LoadError", "NotMergeableError", "TargetError",
    "VeRA", "__version__", "methods",
]
