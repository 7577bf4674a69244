"""Validation of repo ids, ref names and file paths: what the hub stores and serves.

Every name that reaches the database or the blob store passes through here; a bad one raises
:class:`~adapterkit.hub.errors.BadName` that says what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import BadName

_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_REF = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 1024

NAME_RULE = ("1 to 96 characters of letters, digits, '.', '_' and '-', starting and ending with a "
             "letter or digit, without '..' or '--'")


def check_part(kind: str, value: str) -> str:
    """An account or repo name (one part of ``owner/name``)."""
    if not isinstance(value, str) or not _PART.fullmatch(value) or ".." in value or "--" in value:
        raise BadName(f"bad {kind} name {value!r}: use {NAME_RULE}")
    if value.endswith(".git"):
        raise BadName(f"bad {kind} name {value!r}: a name may not end in '.git'")
    return value


def split_repo_id(repo_id: str) -> tuple[str, str]:
    """``owner/name`` as its two checked parts."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise BadName(f"bad repo id {repo_id!r}: a repo id is 'owner/name'")
    owner, name = repo_id.split("/")
    return check_part("owner", owner), check_part("repo", name)


def check_ref(value: str, kind: str = "branch") -> str:
    """A branch or tag name: no '/', no '..', and not a 40-hex string (which names a commit)."""
    if not isinstance(value, str) or not _REF.fullmatch(value) or ".." in value:
        raise BadName(f"bad {kind} name {value!r}: use 1 to 128 letters, digits, '.', '_' and '-', "
                      "starting and ending with a letter or digit, without '..' or '/'")
    if COMMIT_ID.fullmatch(value):
        raise BadName(f"bad {kind} name {value!r}: 40 hex digits name a commit")
    if value.endswith(".lock"):
        raise BadName(f"bad {kind} name {value!r}: a ref name may not end in '.lock'")
    return value


def check_path(path: Any) -> str:
    """A file path inside a repo: relative, '/'-separated, without '.', '..' or empty parts,
    backslashes or control characters, and not under '.git/'."""
    if not isinstance(path, str) or not path:
        raise BadName(f"bad file path {path!r}: a path is a non-empty relative string")
    problem = None
    if len(path.encode()) > MAX_PATH:
        problem = f"longer than {MAX_PATH} bytes"
    elif _CONTROL.search(path):
        problem = "it holds a control character"
    elif path.startswith("/") or re.match(r"[A-Za-z]:", path):
        problem = "it is absolute"
    elif "\\" in path:
        problem = "it holds a backslash (use '/')"
    else:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "it has an empty, '.' or '..' part"
        elif parts[0] == ".git":
            problem = "'.git/' is reserved"
        elif any(len(p.encode()) > 255 for p in parts):
            problem = "a part is longer than 255 bytes"
    if problem:
        raise BadName(f"bad file path {path!r}: {problem}")
    return path


def check_folder(path: Any) -> str:
    """A folder path for ``deletedFolder`` (the same rules as a file path, a trailing '/' allowed)."""
    return check_path(path.rstrip("/")) if isinstance(path, str) else check_path(path)
