"""Tokens, organisation roles, private repos (answered exactly as missing ones), revocation that
takes effect at once, expiry, and the audit log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from sqlalchemy import update

from adapterkit.cli.main import main
from adapterkit.hub.admin import audit_rows, member_set, token_create, token_revoke
from adapterkit.hub.db.models import Audit, Token
from adapterkit.hub.server import ServerThread
from adapterkit.hub.settings import Hub as HubState
from adapterkit.io.hub import HubAuthError, HubClient

from .conftest import Hub, lora_bert
from .raw import raw


@pytest.fixture(scope="module")
def repos(hub: Hub) -> Hub:
    adapter = lora_bert()
    adapter.kit.push("a", "acme/private", token=hub.alice, endpoint=hub.url, private=True)
    adapter.kit.push("a", "alice/secret", token=hub.alice, endpoint=hub.url, private=True)
    adapter.kit.push("a", "alice/open", token=hub.alice, endpoint=hub.url)
    return hub


def test_private_repo_answers_exactly_as_a_missing_one(repos: Hub) -> None:
    for token, status in ((None, 401), (repos.bob, 404)):
        hidden = raw(repos, "GET", "/api/models/alice/secret", token=token)
        missing = raw(repos, "GET", "/api/models/alice/no-such-repo", token=token)
        assert hidden.status == missing.status == status
        assert hidden.headers["X-Error-Code"] == missing.headers["X-Error-Code"] == "RepoNotFound"
        said = hidden.json()["error"].replace("secret", "X")
        assert said == missing.json()["error"].replace("no-such-repo", "X")
        for path in ("/alice/{}/resolve/main/README.md", "/api/models/alice/{}/tree/main",
                     "/api/models/alice/{}/refs"):
            a = raw(repos, "GET", path.format("secret"), token=token)
            b = raw(repos, "GET", path.format("no-such-repo"), token=token)
            assert (a.status, a.headers["X-Error-Code"]) == (b.status, b.headers["X-Error-Code"])
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=repos.url, token=token or False).model_info("alice/secret")
    listed = [m.id for m in HfApi(endpoint=repos.url, token=repos.bob).list_models(author="alice")]
    assert listed == ["alice/open"]


def test_org_roles(repos: Hub) -> None:
    bob = HfApi(endpoint=repos.url, token=repos.bob)
    assert bob.model_info("acme/private").id == "acme/private"  # a read member reads
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_branch("acme/private", branch="bob-branch")
    assert err.value.response.status_code == 403
    assert "bob has read access to acme/private; this needs write" in str(err.value)
    member_set(repos.server.hub, "acme", "bob", "write")
    try:
        bob.create_branch("acme/private", branch="bob-branch")
        with pytest.raises(HfHubHTTPError) as err:
            bob.update_repo_settings("acme/private", private=False)  # admin only
        assert err.value.response.status_code == 403
    finally:
        member_set(repos.server.hub, "acme", "bob", "read")
    assert "acme" in [o["name"] for o in bob.whoami()["orgs"]]


def test_org_token_acts_on_its_org_only(repos: Hub) -> None:
    token = repos.token("alice", "write", org="acme")
    api = HfApi(endpoint=repos.url, token=token)
    assert api.model_info("acme/private").private
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/secret")  # alice's own private repo is outside the token's org
    assert api.model_info("alice/open").id == "alice/open"  # public repos stay readable


def test_read_token_cannot_push(repos: Hub) -> None:
    api = HfApi(endpoint=repos.url, token=repos.alice_read)
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/open")
    assert err.value.response.status_code == 403
    assert err.value.response.headers["X-Error-Code"] == "Forbidden"
    assert "has read scope" in str(err.value)


def test_revoked_token_stops_at_once(repos: Hub) -> None:
    token = repos.token("carol", "write")
    client = HubClient(repos.url, token)
    assert client.whoami()["name"] == "carol"
    token_revoke(repos.server.hub, token)
    with pytest.raises(HubAuthError, match="was revoked"):
        client.whoami()
    with pytest.raises(HfHubHTTPError) as err:  # not RepositoryNotFoundError: the token is at fault
        HfApi(endpoint=repos.url, token=token).model_info("alice/open")
    assert not isinstance(err.value, RepositoryNotFoundError)
    assert err.value.response.status_code == 401
    assert err.value.response.headers["X-Error-Code"] == "TokenRevoked"


def test_changes_from_another_process_take_effect_at_once(repos: Hub) -> None:
    """A second Hub on the same database stands for another process (the CLI, another server):
    its revocations, membership changes and bulk updates reach this server's next request."""
    token = repos.token("gina", "write")
    api = HfApi(endpoint=repos.url, token=token)
    assert api.whoami()["name"] == "gina"  # cached by the server from here on
    other = HubState.open(repos.root, repos.db_url)
    try:
        member_set(other, "acme", "gina", "read")
        assert api.model_info("acme/private").private
        member_set(other, "acme", "gina", None)
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("acme/private")
        with other.db.write() as s:  # a bulk UPDATE, not an object change
            s.execute(update(Token).where(Token.prefix == token[:12]).values(scope="read"))
        with pytest.raises(HfHubHTTPError, match="read scope"):
            api.create_repo("gina/new")
        token_revoke(other, token)
    finally:
        other.close()
    reply = raw(repos, "GET", "/api/whoami-v2", token=token)
    assert (reply.status, reply.headers["X-Error-Code"]) == (401, "TokenRevoked")


def test_wrong_and_expired_tokens(repos: Hub) -> None:
    for token, code in (("akh_" + "x" * 43, "InvalidToken"), ("not-even-a-prefix", "InvalidToken")):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=repos.url, token=token).model_info("alice/open")
        assert not isinstance(err.value, RepositoryNotFoundError)
        assert (err.value.response.status_code, err.value.response.headers["X-Error-Code"]) == (401, code)
    text, _ = token_create(repos.server.hub, "dave", "read", expires_days=1)
    with repos.server.hub.db.write() as s:
        for t in s.query(Token).filter(Token.prefix == text[:12]):
            t.expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    reply = raw(repos, "GET", "/api/whoami-v2", token=text)
    assert (reply.status, reply.headers["X-Error-Code"]) == (401, "TokenExpired")


def test_tokens_are_stored_hashed(repos: Hub) -> None:
    text = repos.token("erin", "read")
    with repos.server.hub.db.read() as s:
        stored = [(t.token_hash, t.prefix) for t in s.query(Token)]
    assert all(text != h and text[12:] not in h for h, _ in stored)
    assert text[:12] in [p for _, p in stored]


def test_token_cli_prints_only_the_token(repos: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--root", str(repos.root)] + (["--db", repos.db_url] if repos.db_url else [])
    assert main(["hub", "token", "create", *where, "--user", "frank", "--scope", "write"]) == 0
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and out.out.startswith("akh_")
    assert HubClient(repos.url, out.out.strip()).whoami()["name"] == "frank"
    assert main(["hub", "token", "revoke", *where, out.out.strip()]) == 0
    assert main(["hub", "token", "create", *where, "--user", "bad..name"]) == 2
    assert "bad user name" in capsys.readouterr().err


def test_audit_log_records_who_did_what(repos: Hub, tmp_path: Path) -> None:
    HubClient(repos.url, repos.bob, tmp_path).pull("acme/private")
    rows = audit_rows(repos.server.hub, repo="acme/private")
    actions = {(r["actor"], r["action"]) for r in rows}
    assert {("alice", "create_repo"), ("alice", "push"), ("bob", "pull")} <= actions
    assert all(r["at"] is not None for r in rows)


def test_cli_names_a_database_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for url, words in (("mysql://x/y", "unsupported database URL"),
                       ("postgresql://nobody@127.0.0.1:1/none", "connection failed")):
        assert main(["hub", "token", "create", "--root", str(tmp_path), "--db", url, "--user", "a"]) == 2
        err = capsys.readouterr().err
        assert "cannot use the hub database" in err and words in err


def test_pull_rows_are_queued_and_written_when_the_server_stops(tmp_path: Path) -> None:
    with ServerThread(tmp_path / "root") as server:
        server.hub.pulls.every_s = 3600.0  # only the shutdown writes them
        token = token_create(server.hub, "hank", "write")[0]
        folder = tmp_path / "adapter"
        folder.mkdir()
        (folder / "README.md").write_text("hello")
        client = HubClient(server.url, token, tmp_path / "cache")
        client.push_folder(folder, "hank/r")
        client.pull("hank/r")
        with server.hub.db.read() as s:
            assert s.query(Audit).filter(Audit.action == "pull").count() == 0  # off the request path
    state = HubState.open(tmp_path / "root")
    try:
        pulls = [(r["actor"], r["path"]) for r in audit_rows(state, repo="hank/r", action="pull")]
    finally:
        state.close()
    assert ("hank", "README.md") in pulls
