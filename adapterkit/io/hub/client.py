"""The hub client: pull a revision into the content-addressed cache, push a folder through the
Hugging Face upload protocol (preupload, LFS batch, PUT, verify, NDJSON commit), and
``hub://owner/name@rev`` sources for :func:`adapterkit.io.resolve.resolve`.

Every downloaded file is checked against the SHA-256 and size the hub lists for it before it
enters the cache. A push names the head it built on as ``parentCommit``, so a concurrent push to
the same branch is refused (:class:`HubConflictError`) instead of being overwritten.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

from .artifacts import attach_prototypes
from .cache import Cache, hub_key, sha256_file
from .config import endpoint_for, token_for
from .errors import HubClientError, HubConflictError
from .http import HubHTTP, quote

_REPO = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[^/@]+))?")


def parse_source(rest: str) -> tuple[str, str]:
    """``owner/name[@revision]`` as (repo id, revision), the revision defaulting to ``main``."""
    m = _REPO.fullmatch(rest)
    if m is None:
        raise HubClientError(f"bad hub source 'hub://{rest}': use hub://owner/name or "
                             "hub://owner/name@revision (a branch, tag or commit id)")
    return m.group("repo"), m.group("rev") or "main"


class HubClient:
    def __init__(self, endpoint: str | None = None, token: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.endpoint = endpoint_for(endpoint)
        self.http = HubHTTP(self.endpoint, token_for(self.endpoint, token))
        self.cache = Cache(cache_dir)
        self.key = hub_key(self.endpoint)

    # -- reading -----------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return dict(self.http.call("GET", "/api/whoami-v2").json())

    def info(self, repo: str, revision: str = "main") -> dict[str, Any]:
        return dict(self.http.call("GET", f"/api/models/{repo}/revision/{quote(revision)}").json())

    def _listing(self, repo: str, info: dict[str, Any]) -> dict[str, tuple[str, int]]:
        """path -> (sha256, size) of a revision, from ``siblings`` (or the tree's LFS oids)."""
        out = {}
        for sib in info.get("siblings") or []:
            sha = sib.get("sha256") or (sib.get("lfs") or {}).get("sha256")
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                raise HubClientError(f"{repo}: the hub lists no SHA-256 for {sib.get('rfilename')}; "
                                     "this client verifies every file and needs one")
            out[str(sib["rfilename"])] = (sha, int(sib["size"]))
        return out

    def pull(self, repo: str, revision: str = "main", prototypes: bool = True) -> Path:
        """A local directory with the files of ``repo`` at ``revision``, every one verified; with
        ``prototypes``, the hub's Arrow prototypes of that commit beside them (when it has some:
        :func:`adapterkit.io.hub.artifacts.attach_prototypes`)."""
        info = self.info(repo, revision)
        commit = str(info["sha"])
        files = self._listing(repo, info)
        for path, (sha, size) in sorted(files.items()):
            if self.cache.verified(sha, size):
                continue
            writer = self.cache.writer()
            try:
                self.http.download(f"/{repo}/resolve/{commit}/{quote_path(path)}", writer.write)
            except BaseException:
                writer.abort()
                raise
            writer.commit(f"{repo}@{commit[:12]}/{path}", sha, size)
        linked = {p: s for p, (s, _) in files.items()}
        if prototypes:
            linked = attach_prototypes(self, repo, commit, linked)
        snapshot = self.cache.link_snapshot(self.key, repo, commit, linked)
        self.cache.remember(self.key, repo, revision, commit)
        return snapshot

    # -- writing -----------------------------------------------------------------------------
    def create_repo(self, repo: str, private: bool = False) -> bool:
        """Create ``repo``; False when it exists already."""
        owner, name = repo.split("/")
        try:
            self.http.call("POST", "/api/repos/create", json_body={
                "name": name, "organization": owner, "private": private, "type": "model"})
        except HubConflictError:
            return False
        return True

    def push_folder(self, folder: str | os.PathLike, repo: str, *, branch: str = "main",
                    message: str | None = None, private: bool = False, replace: bool = True) -> str:
        """Commit the files of ``folder`` to ``repo`` (created when missing); with ``replace``,
        files of the branch that the folder lacks are deleted in the same commit. Returns the
        new commit id (or the head's, when nothing changed)."""
        local = collect(Path(folder))
        self.create_repo(repo, private)
        info = self.info(repo, branch)
        parent, remote = str(info["sha"]), self._listing(repo, info)
        modes = self._preupload(repo, branch, local)
        changed = {p: f for p, f in local.items() if remote.get(p, ("", -1))[0] != f.sha256}
        deleted = sorted(set(remote) - set(local)) if replace else []
        if not changed and not deleted:
            return parent
        self._upload_lfs(repo, branch, [f for p, f in changed.items() if modes[p] == "lfs"])
        lines: list[dict[str, Any]] = [{"key": "header", "value": {
            "summary": message or f"Upload {len(changed)} file(s)", "description": "",
            "parentCommit": parent}}]
        for path, f in sorted(changed.items()):
            if modes[path] == "lfs":
                lines.append({"key": "lfsFile", "value": {"path": path, "algo": "sha256",
                                                          "oid": f.sha256, "size": f.size}})
            else:
                content = base64.b64encode(f.path.read_bytes()).decode()
                lines.append({"key": "file", "value": {"path": path, "encoding": "base64",
                                                       "content": content}})
        lines += [{"key": "deletedFile", "value": {"path": p}} for p in deleted]
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        reply = self.http.call("POST", f"/api/models/{repo}/commit/{quote(branch)}", data=body,
                               content_type="application/x-ndjson")
        return str(reply.json()["commitOid"])

    def _preupload(self, repo: str, branch: str, local: dict[str, LocalFile]) -> dict[str, str]:
        files = []
        for path, f in local.items():
            with open(f.path, "rb") as fh:
                sample = fh.read(512)
            files.append({"path": path, "size": f.size, "sample": base64.b64encode(sample).decode()})
        reply = self.http.call("POST", f"/api/models/{repo}/preupload/{quote(branch)}",
                               json_body={"files": files}).json()
        return {str(f["path"]): str(f["uploadMode"]) for f in reply["files"]}

    def _upload_lfs(self, repo: str, branch: str, files: list[LocalFile]) -> None:
        if not files:
            return
        by_oid = {f.sha256: f for f in files}
        reply = self.http.call("POST", f"/{repo}.git/info/lfs/objects/batch", json_body={
            "operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
            "ref": {"name": branch}, "objects": [{"oid": f.sha256, "size": f.size} for f in files]}).json()
        for obj in reply.get("objects", []):
            if "error" in obj:
                raise HubClientError(f"the hub refused {obj.get('oid')}: {obj['error']}")
            actions = obj.get("actions") or {}
            if "upload" not in actions:
                continue  # the hub has these bytes already
            f = by_oid[obj["oid"]]
            with open(f.path, "rb") as fh:
                resp = self.http.open("PUT", actions["upload"]["href"], body=fh, auth=False,
                                      headers={"Content-Length": str(f.size),
                                               "Content-Type": "application/octet-stream"})
                resp.close()
            if "verify" in actions:
                self.http.call("POST", actions["verify"]["href"], json_body={"oid": f.sha256, "size": f.size})


class LocalFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256, self.size = sha256_file(path)


def collect(folder: Path) -> dict[str, LocalFile]:
    """The files under ``folder`` by repo path (hidden files and folders are left out)."""
    if not folder.is_dir():
        raise HubClientError(f"nothing to push: {folder} is not a directory")
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = LocalFile(path)
    if not out:
        raise HubClientError(f"nothing to push: {folder} holds no files")
    return out


def quote_path(path: str) -> str:
    return "/".join(quote(p) for p in path.split("/"))


def resolve_hub(rest: str, token: str | None = None, endpoint: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """The resolver behind ``hub://owner/name@rev`` (registered with ``io.resolve``)."""
    repo, revision = parse_source(rest)
    return HubClient(endpoint, token, cache_dir).pull(repo, revision)
