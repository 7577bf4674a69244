"""Users, organisations, memberships and tokens.

A token is ``akh_`` plus 43 random URL-safe characters. Only its SHA-256 is stored (the text is
shown once, when it is created). A token has a ``read`` or ``write`` scope, an optional expiry,
and an optional organisation: such a token acts only on that organisation's repos (and reads
public ones).

Every request checks its token: :class:`CallerCache` keeps the caller a token stood for while the
database's *auth epoch* (a row of ``settings``) is unchanged. Every change to a token, an account
or a membership made through these models, in any hub process or CLI command, writes a new epoch
in the same transaction, so a revoked, expired or re-scoped token, or a changed membership, takes
effect on the next request of every process sharing the database. A cache hit costs one
primary-key read of that row instead of the token, user and membership queries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import ORMExecuteState, Session

from .db.models import Account, Member, Setting, Token, as_utc, now
from .errors import BadName, HubError, Unauthorized
from .names import check_part

if TYPE_CHECKING:
    from .db.engine import Database

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
    expires_at: dt.datetime | None = None


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
    return Caller(user.id, user.name, token.scope, token.id, token.prefix, token.org_id, roles,
                  as_utc(token.expires_at))


# -- the auth epoch and the caller cache ---------------------------------------------------------
AUTH_EPOCH = "auth_epoch"
_WATCHED = (Account, Member, Token)


def _bump(session: Session) -> None:
    """Write a new auth epoch in the session's transaction (creating the row when missing)."""
    conn = session.connection()
    value = secrets.token_hex(8)
    done = conn.execute(update(Setting).where(Setting.key == AUTH_EPOCH).values(value=value))
    if not done.rowcount:
        conn.execute(insert(Setting).values(key=AUTH_EPOCH, value=value))


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    if any(isinstance(o, _WATCHED) for o in (*session.new, *session.dirty, *session.deleted)):
        _bump(session)


@event.listens_for(Session, "do_orm_execute")
def _on_bulk(state: ORMExecuteState) -> None:
    mapper = state.bind_mapper
    if (state.is_update or state.is_delete) and mapper is not None and mapper.class_ in _WATCHED:
        _bump(state.session)


def ensure_epoch(db: Database) -> None:
    """Create the auth epoch row when missing (another process may create it first)."""
    try:
        with db.write() as session:
            if session.get(Setting, AUTH_EPOCH) is None:
                session.add(Setting(key=AUTH_EPOCH, value=secrets.token_hex(8)))
    except IntegrityError:
        pass  # another process created it first


class CallerCache:
    """The callers of recently seen tokens (by the token's hash), each valid while the auth epoch
    it was read under is the current one and the token has not expired. Refused tokens are not
    cached: each is looked up again."""

    def __init__(self, db: Database, size: int = 4096) -> None:
        self.db, self.size = db, size
        self._entries: dict[str, tuple[str, Caller]] = {}
        self._lock = threading.Lock()

    def epoch(self) -> str | None:
        with self.db.read_engine.connect() as conn:
            value = conn.execute(select(Setting.value).where(Setting.key == AUTH_EPOCH)).scalar()
        return None if value is None else str(value)

    def lookup(self, header: str | None) -> Caller | None:
        """Like :func:`authenticate`, from the cache when the epoch still matches."""
        if not header:
            return None
        key = hash_token(header)
        epoch = self.epoch()  # read before the token: a change after it moves the epoch again
        hit = self._entries.get(key)
        if hit is not None and epoch is not None and hit[0] == epoch and \
                (hit[1].expires_at is None or hit[1].expires_at > now()):
            return hit[1]
        with self.db.read() as session:
            caller = authenticate(session, header)
        if caller is not None and epoch is not None:
            with self._lock:
                if len(self._entries) >= self.size:
                    self._entries.clear()
                self._entries[key] = (epoch, caller)
        return caller
