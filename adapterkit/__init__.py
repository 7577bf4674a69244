"""adapterkit: parameter-efficient, modular transfer learning with adapters.

Adapters are named, composable, mergeable and shareable objects attached to any
``torch.nn.Module``::

    import adapterkit as ak
    kit = ak.AdapterKit(model)
    kit.add("sst2", ak.LoRA(r=8, targets=("attn.q", "attn.v")))
    kit.train("sst2", train_also=("classifier",))
"""

from .compose.blocks import Average, BatchSplit, CompositionError, Fuse, Parallel, Route, Split, Stack
from .compose.routed_blocks import Arrow, Mixture
from .core.layouts import LAYOUTS, ROLES, Layout
from .core.version import __version__
from .errors import (
    AdapterError,
    AdapterNameError,
    ConfigError,
    LoadError,
    NotMergeableError,
    TargetError,
)
from .io.pissa import save_pissa_as_lora
from .kit import AdapterKit, extract_lora
from .methods import methods
from .methods.adapterbias import AdapterBias
from .methods.bottleneck import Bottleneck
from .methods.compacter import Compacter
from .methods.dora import DoRA
from .methods.dylora import DyLoRA, set_dylora_rank
from .methods.eigenlora import EigenLoRA
from .methods.fusion import Fusion
from .methods.hydra import Hydra
from .methods.hyper import HyperAdapter
from .methods.ia3 import IA3
from .methods.invertible import InvertibleAdapter
from .methods.lora import LoRA
from .methods.pissa import pissa_as_lora
from .methods.poly import Poly
from .methods.prefix import PrefixTuning
from .methods.prompt import PromptTuning
from .methods.router import MixtureRouter
from .methods.shira import SHiRA
from .methods.sparse_adapter import SparseAdapter, snip_prune
from .methods.union import MAM, MethodUnion, UniPELT
from .methods.vera import VeRA
from .ops.combine.model import CombineError, CombineReport
from .ops.extract.model import ExtractionReport
from .ops.quantize.model import QuantizeReport, quantize
from .ops.subspace import SubspaceReport, principal_subspace

__all__ = [
    "IA3", "LAYOUTS", "MAM", "ROLES", "AdapterBias", "AdapterError", "AdapterKit", "AdapterNameError",
    "Arrow", "Average", "BatchSplit", "Bottleneck", "CombineError", "CombineReport", "Compacter",
    "CompositionError", "ConfigError", "DoRA", "DyLoRA", "EigenLoRA", "ExtractionReport", "Fuse",
    "Fusion", "Hydra", "HyperAdapter", "InvertibleAdapter", "Layout", "LoRA", "LoadError", "MethodUnion",
    "Mixture", "MixtureRouter", "NotMergeableError", "Parallel", "Poly", "PrefixTuning",
    "PromptTuning", "QuantizeReport", "Route", "SHiRA", "SparseAdapter", "Split", "Stack", "SubspaceReport",
    "TargetError", "UniPELT", "VeRA",
    "__version__", "extract_lora", "methods", "pissa_as_lora", "principal_subspace",
    "quantize", "save_pissa_as_lora", "set_dylora_rank", "snip_prune",
]
