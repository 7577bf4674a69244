"""Saving a PiSSA adapter as the plain LoRA that applies to the original base weights."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..methods.pissa import pissa_as_lora
from .kitio import save_record

if TYPE_CHECKING:
    from ..kit import AdapterKit


def save_pissa_as_lora(kit: AdapterKit, name: str, directory: str | os.PathLike,
                       format: str = "adapterkit") -> None:
    """Write PiSSA adapter ``name`` as the plain LoRA of :func:`pissa_as_lora` (``format``:
    ``"adapterkit"`` or ``"peft"``): loaded onto the original base weights it gives the outputs
    of the PiSSA adapter on its residual base, up to float rounding. The kit is unchanged."""
    save_record(kit, pissa_as_lora(kit, name), directory, format)
