"""Errors the hub answers with: an HTTP status, an ``X-Error-Code`` and a message.

The codes the Hugging Face client classifies (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) are used exactly where that client expects them; the others name the problem.
"""

from __future__ import annotations


class HubError(Exception):
    """An error answered to the client; nothing was changed by the request that raised it."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 commit: str | None = None, header: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.header = header  # X-Error-Message when it must differ from the body's message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.commit = commit  # sent as X-Repo-Commit (an EntryNotFound the client may cache)


class RepoNotFound(HubError):
    status, code = 404, "RepoNotFound"


class RevisionNotFound(HubError):
    status, code = 404, "RevisionNotFound"


class EntryNotFound(HubError):
    status, code = 404, "EntryNotFound"


class Unauthorized(HubError):
    status, code = 401, "Unauthorized"


class Forbidden(HubError):
    status, code = 403, "Forbidden"


class Conflict(HubError):
    status, code = 409, "Conflict"


class StaleParent(HubError):
    """``parentCommit`` is no longer the head of the branch."""

    status, code = 412, "ParentCommitMismatch"


class TooLarge(HubError):
    status, code = 413, "PayloadTooLarge"


class BadName(HubError):
    status, code = 400, "InvalidName"


class BadContent(HubError):
    """An uploaded body whose bytes do not hash or size to what the client announced."""

    status, code = 400, "ContentMismatch"


class Refused(HubError):
    """A file the server refuses to store (pickle formats without ``--allow-pickle``)."""

    status, code = 422, "FileRefused"
