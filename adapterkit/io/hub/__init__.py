"""The adapterkit hub client: ``hub://owner/name@rev`` sources, pull and push.

Standard library only (``urllib``), so that loading from a hub adds no dependency to the core;
``huggingface_hub`` is not needed (the server side, :mod:`adapterkit.hub`, is the ``hub`` extra).
Importing this package registers the ``hub`` scheme with :mod:`adapterkit.io.resolve`.
"""

from ..resolve import register_scheme
from .client import HubClient, parse_source, resolve_hub
from .errors import (
                     EntryNotFoundError,
                     HubAuthError,
                     HubClientError,
                     HubConflictError,
                     IntegrityError,
                     RepoNotFoundError,
                     RevisionNotFoundError,
)

register_scheme("hub", resolve_hub)

__all__ = ["EntryNotFoundError", "HubAuthError", "HubClient", "HubClientError", "HubConflictError",
           "IntegrityError", "RepoNotFoundError", "RevisionNotFoundError", "parse_source", "resolve_hub"]
