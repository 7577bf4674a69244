"""Administration on the server's own root and database (what ``adapterkit hub token | member |
audit`` run): no HTTP, the operator's access to ``--root`` is the authority."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from . import audit
from .accounts import create_token, ensure_account, find_account, revoke_token, role_of, set_role
from .db.models import Account, Token, as_utc
from .errors import HubError
from .settings import Hub


def token_create(hub: Hub, user: str, scope: str = "read", org: str | None = None,
                 expires_days: float | None = None) -> tuple[str, list[str]]:
    """A new token for ``user`` (created when missing), optionally limited to ``org``; returns the
    token text and notes on what else was created."""
    notes = []
    with hub.db.write() as s:
        account, made = ensure_account(s, user, "user")
        if made:
            notes.append(f"created user {user}")
        org_account = None
        if org is not None:
            org_account, made_org = ensure_account(s, org, "org")
            role = role_of(s, org_account, account)
            if made_org or role is None:
                new_role = "admin" if made_org else scope
                set_role(s, org_account, account, new_role)
                notes.append(("created organisation " + org + ", " if made_org else "")
                             + f"{user} is now a {new_role} member of {org}")
        expires = dt.timedelta(days=expires_days) if expires_days else None
        text, token = create_token(s, account, scope, org_account, expires)
        audit.record(s, "admin", "token_create", None, detail=f"{token.prefix} user={user} scope={scope}"
                     + (f" org={org}" if org else ""))
    return text, notes


def token_revoke(hub: Hub, text: str) -> str:
    with hub.db.write() as s:
        token = revoke_token(s, text)
        audit.record(s, "admin", "token_revoke", None, detail=token.prefix)
        return token.prefix


def token_list(hub: Hub, user: str | None = None) -> list[dict[str, Any]]:
    with hub.db.read() as s:
        q = select(Token, Account).join(Account, Account.id == Token.user_id).order_by(Token.id)
        if user:
            q = q.where(Account.name == user)
        rows = []
        for token, account in s.execute(q).tuples():
            org = s.get(Account, token.org_id) if token.org_id else None
            rows.append({"prefix": token.prefix, "user": account.name, "org": org.name if org else None,
                         "scope": token.scope, "created": as_utc(token.created_at),
                         "expires": as_utc(token.expires_at), "revoked": as_utc(token.revoked_at)})
        return rows


def member_set(hub: Hub, org: str, user: str, role: str | None) -> str:
    """Give ``user`` a role in ``org`` (both created when missing), or remove them (role None)."""
    with hub.db.write() as s:
        org_account, _ = ensure_account(s, org, "org")
        if role is None:
            account = find_account(s, user)
            if account is None:
                raise HubError(f"no user named {user!r}")
        else:
            account, _ = ensure_account(s, user, "user")
        set_role(s, org_account, account, role)
        audit.record(s, "admin", "member", org, detail=f"{user}={role or 'removed'}")
    return f"{user} is {'no longer a member' if role is None else 'a ' + role + ' member'} of {org}"


def audit_rows(hub: Hub, repo: str | None = None, action: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    hub.pulls.flush()  # this process's queued pull rows (another process writes its own)
    with hub.db.read() as s:
        return [{"at": as_utc(a.at), "actor": a.actor, "action": a.action, "repo": a.repo,
                 "revision": a.revision, "path": a.path, "detail": a.detail, "remote": a.remote}
                for a in audit.entries(s, repo, action, limit)]
