"""``transformers.Trainer`` with adapterkit adapters: :class:`KitTrainerMixin` makes checkpoints
adapter-only (the adapter and its trained heads, in the adapterkit format or PEFT's), restores
them exactly on resume and for ``load_best_model_at_end``, and handles frozen inputs under
gradient checkpointing. ``KitTrainer`` is the mixin on ``Trainer``; put the mixin first on any
other subclass, such as TRL's ``SFTTrainer`` (:mod:`.sft_trainer`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer

from ..core.distributed import is_main_process
from ..errors import AdapterError, ConfigError
from ..kit import AdapterKit

FORMATS = ("adapterkit", "peft")
_RESUME = "__resume__"
TRAINING_ARGS_NAME = "training_args.bin"


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module") and not isinstance(model, AdapterKit):
        model = model.module
    return model


def _pick_adapter(kit: AdapterKit, adapter: str | None) -> str:
    if adapter is not None:
        kit.record(adapter)
        return adapter
    if len(kit.active) == 1:
        return kit.active[0]
    if len(kit.names) == 1:
        return kit.names[0]
    raise ConfigError(f"pass adapter= to choose which adapter to train; adapters: {kit.names}")


class KitTrainerMixin:
    """Adapter-only checkpoints for a ``Trainer`` subclass.

    ``adapter`` names the adapter to train (default: the active one, or the only one); it is
    frozen-in with ``kit.train(adapter, train_also)`` unless ``prepared`` says that was done.
    ``save_format`` is ``"adapterkit"`` or ``"peft"`` (LoRA and IA3 PEFT files)."""

    args: Any  # set by Trainer.__init__
    state: Any

    def __init__(self, *args: Any, adapter: str | None = None, train_also: Sequence[str] = (),
                 save_format: str = "adapterkit", prepared: bool = False, **kwargs: Any) -> None:
        if save_format not in FORMATS:
            raise ConfigError(f"save_format must be one of {list(FORMATS)}, got {save_format!r}")
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise ConfigError("KitTrainer needs the model an AdapterKit holds adapters of")
        kit = AdapterKit(_unwrap(model))
        self.kit, self.adapter_name, self.save_format = kit, _pick_adapter(kit, adapter), save_format
        if not prepared:
            kit.train(self.adapter_name, train_also=tuple(train_also))
        # transformers refuses to train a quantized model that is not a PEFT model; its
        # trainable adapters here are adapterkit's
        quantized = bool(getattr(kit.model, "is_quantized", False))
        flag = "_hf_peft_config_loaded"
        was = kit.model.__dict__.get(flag)
        if quantized:
            kit.model.__dict__[flag] = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            if quantized:
                if was is None:
                    kit.model.__dict__.pop(flag, None)
                else:
                    kit.model.__dict__[flag] = was
        if getattr(self.args, "gradient_checkpointing", False):
            self._inputs_require_grads()

    def _inputs_require_grads(self) -> None:
        """With every base parameter frozen, checkpointed blocks get inputs that do not require
        grad and (reentrant checkpointing) give the adapters none: make the embeddings' output
        require grad, as transformers >= 5 does itself and 4.x does only for PEFT models."""
        model: Any = self.kit.model
        if getattr(model, "_require_grads_hook", None) is None and \
                hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    # -- saving ----------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the adapter (and its heads) alone; under torch.distributed every rank takes part
        in gathering sharded tensors and rank 0 writes."""
        args = self.args
        output_dir = output_dir if output_dir is not None else args.output_dir
        self.kit.save(self.adapter_name, output_dir, format=self.save_format)
        if not is_main_process():
            return
        processing = getattr(self, "processing_class", None)
        if processing is not None:
            processing.save_pretrained(output_dir)
        torch.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # -- loading ---------------------------------------------------------------------------
    def load_adapter_state(self, directory: str) -> None:
        """Copy the adapter and heads saved in ``directory`` into the trained adapter, in place
        (the optimizer keeps its parameters); the checkpoint is validated as ``kit.load`` does."""
        kit, name = self.kit, self.adapter_name
        if _RESUME in kit.names:
            kit.remove(_RESUME)
        active = kit.active
        record = kit.record(name)
        try:
            kit.load(directory, name=_RESUME)
        except AdapterError as exc:
            raise AdapterError(f"cannot restore adapter {name!r} from {directory}: {exc}") from None
        try:
            loaded = kit.record(_RESUME)
            with torch.no_grad():
                for host, module in record.modules.items():
                    source = loaded.modules[host].state_dict()
                    for key, t in module.state_dict(keep_vars=True).items():
                        t.copy_(source[key])
        finally:
            kit.remove(_RESUME)
            kit.activate(list(active) or None)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self.load_adapter_state(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.load_adapter_state(self.state.best_model_checkpoint)


class KitTrainer(KitTrainerMixin, Trainer):
    """``transformers.Trainer`` training one adapterkit adapter, with adapter-only checkpoints."""
