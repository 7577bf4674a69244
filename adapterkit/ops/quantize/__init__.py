"""Low-bit adapters: the n-bit codes (``tensors``), and quantised checkpoints plus
quantisation-aware training (``model``)."""
