"""Users, organisations, memberships and tokens.

A token is ``akh_`` plus 43 random URL-safe characters. Only its SHA-256 is stored (the text is
shown once, when it is created). A token has a ``read`` or ``write`` scope, an optional expiry,
and an optional organisation: such a token acts only on that organisation's repos (and reads
public ones). Every request looks its token up again, so a revoked token stops working at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db.models import Account, Member, Token, as_utc, now
from .errors import BadName, HubError, Unauthorized
from .names import check_part

PREFIX = "akh_"
SCOPES = ("read", "write")
ROLES = ("read", "write", "admin")
RANK = {"read": 1, "write": 2, "admin": 3}
#: the message the Hugging Face client shows as-is (it then does not read a 401 as "no such repo")
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass
class Caller:
    """The authenticated user behind a request, with the limits of the token it used."""

    user_id: int
    name: str
    scope: str
    token_id: int
    token_prefix: str
    org_id: int | None = None
    roles: dict[int, str] = field(default_factory=dict)  # org account id -> role


def hash_token(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def find_account(session: Session, name: str) -> Account | None:
    return session.scalar(select(Account).where(Account.name == name))


def ensure_account(session: Session, name: str, kind: str) -> tuple[Account, bool]:
    """The account called ``name`` (created as ``kind`` when missing) and whether it was created."""
    check_part("user" if kind == "user" else "organisation", name)
    account = find_account(session, name)
    if account is not None:
        if account.kind != kind:
            want = "user" if kind == "user" else "organisation"
            raise BadName(f"{name!r} is a {account.kind}, not a {want}")
        return account, False
    account = Account(name=name, kind=kind, created_at=now())
    session.add(account)
    session.flush()
    return account, True


def set_role(session: Session, org: Account, user: Account, role: str | None) -> None:
    """Make ``user`` a ``role`` member of ``org``; ``None`` removes the membership."""
    if role is not None and role not in ROLES:
        raise HubError(f"bad role {role!r}: use one of {list(ROLES)}")
    member = session.get(Member, (org.id, user.id))
    if role is None:
        if member is not None:
            session.delete(member)
        return
    if member is None:
        session.add(Member(org_id=org.id, user_id=user.id, role=role))
    else:
        member.role = role


def role_of(session: Session, org: Account, user: Account) -> str | None:
    member = session.get(Member, (org.id, user.id))
    return member.role if member else None


def create_token(session: Session, user: Account, scope: str, org: Account | None = None,
                 expires_in: dt.timedelta | None = None) -> tuple[str, Token]:
    if scope not in SCOPES:
        raise HubError(f"bad token scope {scope!r}: use one of {list(SCOPES)}")
    text = PREFIX + secrets.token_urlsafe(32)
    created = now()
    token = Token(token_hash=hash_token(text), prefix=text[:12], user_id=user.id,
                  org_id=org.id if org else None, scope=scope, created_at=created,
                  expires_at=created + expires_in if expires_in else None)
    session.add(token)
    session.flush()
    return text, token


def revoke_token(session: Session, text: str) -> Token:
    """Revoke the token with this text (or, for a listing's 12-character prefix, the one token
    that has it)."""
    token = session.scalar(select(Token).where(Token.token_hash == hash_token(text)))
    if token is None and len(text) == 12:
        found = list(session.scalars(select(Token).where(Token.prefix == text)))
        token = found[0] if len(found) == 1 else None
    if token is None:
        raise HubError("no such token: give the token's text, or the 12-character prefix that "
                       "'adapterkit hub token list' shows", status=404, code="TokenNotFound")
    if token.revoked_at is None:
        token.revoked_at = now()
    return token


def _refuse(code: str, why: str) -> Unauthorized:
    return Unauthorized(f"{BAD_CREDENTIALS}: {why}", code=code, header=BAD_CREDENTIALS)


def authenticate(session: Session, header: str | None) -> Caller | None:
    """The caller for an ``Authorization`` header; None without one. A header with a token that
    is unknown, revoked or expired raises :class:`Unauthorized`."""
    if not header:
        return None
    scheme, _, text = header.partition(" ")
    text = text.strip()
    if scheme.lower() != "bearer" or not text:
        raise _refuse("InvalidToken", "use 'Authorization: Bearer <token>'")
    token = session.scalar(select(Token).where(Token.token_hash == hash_token(text)))
    if token is None:
        raise _refuse("InvalidToken", "the token is not known to this hub")
    if token.revoked_at is not None:
        raise _refuse("TokenRevoked", f"the token {token.prefix}... was revoked")
    expires = as_utc(token.expires_at)
    if expires is not None and expires <= now():
        raise _refuse("TokenExpired", f"the token {token.prefix}... expired at {expires.isoformat()}")
    return authenticate_token(session, token)


def authenticate_token(session: Session, token: Token) -> Caller:
    """The caller a valid token stands for, with the user's current memberships."""
    user = session.get(Account, token.user_id)
    if user is None:
        raise _refuse("InvalidToken", "the token's user no longer exists")
    roles = {m.org_id: m.role for m in session.scalars(select(Member).where(Member.user_id == user.id))}
    return Caller(user.id, user.name, token.scope, token.id, token.prefix, token.org_id, roles)
