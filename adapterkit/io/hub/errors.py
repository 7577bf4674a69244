"""Errors of the hub client, one class per answer a caller may want to tell apart."""

from __future__ import annotations

from ...errors import LoadError


class HubClientError(LoadError):
    """A hub request failed; ``status`` and ``code`` are the server's (None without an answer).
    A ``LoadError``, so that ``kit.load("hub://...")`` fails with the loaders' own error class."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RepoNotFoundError(HubClientError):
    """No such repo, or a private one the token may not read (the hub answers both alike)."""


class RevisionNotFoundError(HubClientError):
    pass


class EntryNotFoundError(HubClientError):
    pass


class HubAuthError(HubClientError):
    """The token is unknown, revoked, expired, or lacks the scope or role the request needs."""


class HubConflictError(HubClientError):
    """409 or 412: the repo or ref exists, or the branch moved since the push began."""


class IntegrityError(HubClientError):
    """Downloaded bytes whose SHA-256 or size differ from what the hub announced."""


def error_for(status: int, code: str | None, message: str) -> HubClientError:
    """The exception for an error answer, classified by ``X-Error-Code`` first."""
    by_code: dict[str, type[HubClientError]] = {
        "RepoNotFound": RepoNotFoundError, "RevisionNotFound": RevisionNotFoundError,
        "EntryNotFound": EntryNotFoundError}
    cls = by_code.get(code or "")
    if cls is None:
        if status in (401, 403):
            cls = HubAuthError
        elif status in (409, 412):
            cls = HubConflictError
        else:
            cls = HubClientError
    return cls(message, status, code)
