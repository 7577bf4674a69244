"""The composition engine: compiled blocks (``nodes``), per-example routing (``route``,
``kernels``, ``cache``), Parallel's input replication (``parallel``), the compiler (``compile``),
the kit methods (``api``) and setups on disk (``setup``). The values live in
:mod:`adapterkit.compose.blocks`."""
