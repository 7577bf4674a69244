"""Core primitives: the adapter-module contract, sites and layouts, the per-adapter record,
merging, routing kernels and their caches, checkpoint files, summaries and progress bars."""
