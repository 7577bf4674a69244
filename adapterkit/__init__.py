"""adapterkit: parameter-efficient, modular transfer learning with adapters.

Adapters are named, composable, mergeable and shareable objects attached to any
``torch.nn.Module``::

    import adapterkit as ak
    kit = ak.AdapterKit(model)
    kit.add("sst2", ak.LoRA(r=8, targets=("attn.q", "attn.v")))
    kit.train("sst2", train_also=("classifier",))
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AdapterError,
    AdapterNameError,
    ConfigError,
    LoadError,
    NotMergeableError,
    TargetError,
)
from .kit import AdapterKit  # noqa: E402
from .layouts import LAYOUTS, ROLES, Layout  # noqa: E402
from .methods import methods  # noqa: E402
from .methods.bottleneck import Bottleneck  # noqa: E402
from .methods.lora import LoRA  # noqa: E402

__all__ = [
    "LAYOUTS", "ROLES", "AdapterError", "AdapterKit", "AdapterNameError", "Bottleneck",
    "ConfigError", "Layout", "LoRA", "LoadError", "NotMergeableError", "TargetError",
    "__version__", "methods",
]
