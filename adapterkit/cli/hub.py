"""``adapterkit hub serve | token | member | audit | purge | verify | reindex`` (the server side, run on the
hub's ``--root``) and ``adapterkit push | pull | login`` (the client side)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import AdapterError


class HubCommandError(AdapterError):
    """A hub command the server side refused (a bad name, an unknown token...)."""


def _open(args: argparse.Namespace) -> Any:
    from ..hub.settings import Hub

    return Hub.open(args.root, args.db)


def _server_errors(func: Any) -> Any:
    """Run a server-side command, turning the hub's own errors into CLI errors."""
    def run(args: argparse.Namespace) -> int:
        try:
            from sqlalchemy.exc import SQLAlchemyError

            from ..hub.errors import HubError

            return int(func(args))
        except ModuleNotFoundError as exc:
            raise HubCommandError(f"the hub server needs the hub extra (missing module {exc.name!r}): "
                                  "pip install 'adapterkit[hub]'") from None
        except HubError as exc:
            raise HubCommandError(exc.message) from None
        except (SQLAlchemyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HubCommandError(f"cannot use the hub database {args.db or 'under ' + args.root}: "
                                  f"{first}") from None
    return run


def cmd_serve(args: argparse.Namespace) -> int:
    from ..hub.server import serve
    from ..hub.settings import HubSettings

    settings = HubSettings(root=Path(args.root), db_url=args.db, allow_pickle=args.allow_pickle,
                           max_file_bytes=args.max_file_size, max_request_bytes=args.max_request_size,
                           upload_grace_s=args.upload_grace)
    serve(settings, host=args.host, port=args.port, log_level=args.log_level,
          collect_every_s=args.collect_every)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from ..hub.admin import token_create

    hub = _open(args)
    try:
        text, notes = token_create(hub, args.user, args.scope, args.org, args.expires_days)
    finally:
        hub.close()
    for note in notes:
        print(note, file=sys.stderr)
    print(text)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from ..hub.admin import token_revoke

    hub = _open(args)
    try:
        prefix = token_revoke(hub, args.token)
    finally:
        hub.close()
    print(f"revoked {prefix}...", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from ..hub.admin import token_list

    hub = _open(args)
    try:
        rows = token_list(hub, args.user)
    finally:
        hub.close()
    for r in rows:
        state = "revoked" if r["revoked"] else (
            f"expires {r['expires']:%Y-%m-%d}" if r["expires"] else "valid")
        print(f"{r['prefix']}  {r['user']:<20} {r['scope']:<5} org={r['org'] or '-'}  {state}")
    return 0


def cmd_member(args: argparse.Namespace) -> int:
    from ..hub.admin import member_set

    hub = _open(args)
    try:
        print(member_set(hub, args.org, args.user, None if args.role == "none" else args.role))
    finally:
        hub.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from ..hub.admin import audit_rows

    hub = _open(args)
    try:
        rows = audit_rows(hub, args.repo, args.action, args.limit)
    finally:
        hub.close()
    for r in rows:
        print(json.dumps({**r, "at": r["at"].isoformat() if r["at"] else None}))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from ..hub.gc import purge

    hub = _open(args)
    try:
        report = purge(hub, args.grace)
    finally:
        hub.close()
    print(json.dumps(report.as_dict()))
    return 0


def cmd_expunge(args: argparse.Namespace) -> int:
    from ..hub.expunge import expunge
    from ..hub.gc import purge

    hub = _open(args)
    try:
        n = expunge(hub, args.repo, args.path)
        report = purge(hub) if args.purge else None
    finally:
        hub.close()
    print(f"removed {args.path} from {n} commit(s) of {args.repo}"
          + (f"; purge: {json.dumps(report.as_dict())}" if report else "; run 'adapterkit hub purge' to "
             "delete its bytes"))
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from ..hub.catalog import reindex

    hub = _open(args)
    try:
        print(f"indexed {reindex(hub)} repo(s)")
    finally:
        hub.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..hub.gc import verify

    hub = _open(args)
    try:
        report = verify(hub)
    finally:
        hub.close()
    print(json.dumps(report.as_dict(), indent=None if args.json else 2))
    return 0 if report.ok else 1


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="the hub's directory (blob store, SQLite database)")
    p.add_argument("--db", help="a database URL (postgresql://...); default: SQLite under --root")


def _add_server(sub: Any) -> None:
    hub = sub.add_parser("hub", help="run and administer an adapterkit hub").add_subparsers(
        dest="hub_command", required=True)
    s = hub.add_parser("serve", help="serve the hub over HTTP (the Hugging Face Hub protocol)")
    _root(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8500)
    s.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt/.pkl files (refused by default: loading them can run code)")
    s.add_argument("--max-file-size", type=int, default=5 << 30, help="bytes per uploaded file")
    s.add_argument("--max-request-size", type=int, default=64 << 20, help="bytes per other request body")
    s.add_argument("--upload-grace", type=float, default=3600.0,
                   help="seconds an uploaded but uncommitted blob is kept before purge collects it")
    s.add_argument("--collect-every", type=float, default=600.0,
                   help="seconds between collections of expired uploads (0: never; purge does it too)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_server_errors(cmd_serve))
    token = hub.add_parser("token", help="create, revoke and list tokens").add_subparsers(
        dest="token_command", required=True)
    c = token.add_parser("create", help="create a token (and the user if missing); prints only the token")
    _root(c)
    c.add_argument("--user", required=True)
    c.add_argument("--org", help="limit the token to this organisation (created, with the user as "
                   "admin, when missing; a user who is not a member joins with the token's scope)")
    c.add_argument("--scope", choices=("read", "write"), default="read")
    c.add_argument("--expires-days", type=float, help="days until the token expires (default: never)")
    c.set_defaults(func=_server_errors(cmd_token_create))
    r = token.add_parser("revoke", help="revoke a token (its text, or its 12-character prefix)")
    _root(r)
    r.add_argument("token")
    r.set_defaults(func=_server_errors(cmd_token_revoke))
    ls = token.add_parser("list", help="list tokens (prefix, user, scope, state)")
    _root(ls)
    ls.add_argument("--user")
    ls.set_defaults(func=_server_errors(cmd_token_list))
    _add_admin(hub)


def _add_admin(hub: Any) -> None:
    m = hub.add_parser("member", help="set a user's role in an organisation")
    _root(m)
    m.add_argument("--org", required=True)
    m.add_argument("--user", required=True)
    m.add_argument("--role", choices=("read", "write", "admin", "none"), required=True)
    m.set_defaults(func=_server_errors(cmd_member))
    a = hub.add_parser("audit", help="print the audit log, newest first, one JSON object a line")
    _root(a)
    a.add_argument("--repo")
    a.add_argument("--action")
    a.add_argument("--limit", type=int, default=100)
    a.set_defaults(func=_server_errors(cmd_audit))
    p = hub.add_parser("purge", help="remove every blob that no remaining commit references")
    _root(p)
    p.add_argument("--grace", type=float, help="seconds an uncommitted upload is kept (default: the "
                   "server's --upload-grace, 3600)")
    p.set_defaults(func=_server_errors(cmd_purge))
    e = hub.add_parser("expunge", help="remove a file from every commit of a repo (its whole history)")
    _root(e)
    e.add_argument("repo", help="owner/name")
    e.add_argument("path", help="the file's path in the repo")
    e.add_argument("--purge", action="store_true", help="purge right after, so its bytes go too")
    e.set_defaults(func=_server_errors(cmd_expunge))
    v = hub.add_parser("verify", help="rehash every blob; report missing, corrupt and orphaned ones")
    _root(v)
    v.add_argument("--json", action="store_true", help="one line of JSON")
    v.set_defaults(func=_server_errors(cmd_verify))
    r = hub.add_parser("reindex", help="rebuild every repo's search document (text, embedding, fit)")
    _root(r)
    r.set_defaults(func=_server_errors(cmd_reindex))


def add_commands(sub: Any) -> None:
    """Register ``hub`` and ``push``, ``pull``, ``login`` on the top-level parser."""
    _add_server(sub)
    from .hub_client import add_client_commands

    add_client_commands(sub)


__all__ = ["add_commands"]
