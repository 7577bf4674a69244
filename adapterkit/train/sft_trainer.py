"""TRL's ``SFTTrainer`` with adapter-only adapterkit checkpoints (see :mod:`.trainer`)."""

from __future__ import annotations

from trl import SFTTrainer

from .trainer import KitTrainerMixin


class KitSFTTrainer(KitTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` training one adapterkit adapter; pass a model whose kit holds it (no
    ``peft_config``)."""
