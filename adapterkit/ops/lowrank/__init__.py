"""Low-rank factors: the SVD math (``tensors``) and LoRA adapters built from factors (``model``)."""
