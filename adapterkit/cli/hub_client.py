"""``adapterkit push | pull | login``: the hub client from the shell."""

from __future__ import annotations

import argparse
import getpass
import shutil
import sys
from pathlib import Path
from typing import Any


def cmd_push(args: argparse.Namespace) -> int:
    from ..io.hub import HubClient

    client = HubClient(args.endpoint, args.token)
    commit = client.push_folder(args.dir, args.repo, branch=args.branch, message=args.message,
                                private=args.private, replace=not args.keep)
    print(commit)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..io.hub import HubClient, parse_source

    repo, revision = parse_source(args.source.removeprefix("hub://"))
    path = HubClient(args.endpoint, args.token).pull(repo, revision)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(path.rglob("*")):
            if f.is_file():
                dest = out / f.relative_to(path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        path = out
    print(path)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from ..io.hub import HubClient
    from ..io.hub.config import endpoint_for, save_login

    endpoint = endpoint_for(args.endpoint)
    token = args.token or (sys.stdin.readline().strip() if not sys.stdin.isatty()
                           else getpass.getpass(f"token for {endpoint}: ").strip())
    me = HubClient(endpoint, token).whoami()  # an invalid token fails here, before it is saved
    path = save_login(endpoint, token)
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    print(f"logged in to {endpoint} as {me.get('name')} ({role} token); saved to {path}")
    return 0


def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="the hub's URL (default: $ADAPTERKIT_HUB, else the login's)")
    p.add_argument("--token", help="a token (default: $ADAPTERKIT_HUB_TOKEN, else the login's)")


def add_client_commands(sub: Any) -> None:
    p = sub.add_parser("push", help="push a saved adapter directory to a hub repo")
    p.add_argument("dir")
    p.add_argument("repo", help="owner/name (created when missing)")
    _client(p)
    p.add_argument("--branch", default="main")
    p.add_argument("--message")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--keep", action="store_true", help="keep files of the branch the directory lacks")
    p.set_defaults(func=cmd_push)
    q = sub.add_parser("pull", help="download a hub revision (verified) and print its local path")
    q.add_argument("source", help="owner/name[@revision] or hub://owner/name[@revision]")
    _client(q)
    q.add_argument("--out", help="copy the files into this directory")
    q.set_defaults(func=cmd_pull)
    g = sub.add_parser("login", help="check a token against a hub and save it")
    _client(g)
    g.set_defaults(func=cmd_login)
