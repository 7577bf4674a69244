"""Extracting a LoRA adapter from a full fine-tune: per-weight SVD (``tensors``) and the
model-level extraction with its report (``model``)."""
