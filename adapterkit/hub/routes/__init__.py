"""The hub's HTTP routes, one module per area: files, info, upload, manage."""
