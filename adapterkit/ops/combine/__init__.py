"""Combining adapters: pure functions over factors and state dicts (``tensors``), and
``kit.combine`` over the adapters of a kit (``model``)."""
