"""The adapterkit hub under load, on SQLite and on PostgreSQL (``--pg URL`` or
``$ADAPTERKIT_TEST_PG``; without one only SQLite runs, and the results say so).

- ``hf_hub_download`` (huggingface_hub, a fresh cache per call) of a 1 MB and a 30 MB adapter at
  1 and 16 concurrent clients (threads): p50 and p99 latency, throughput, and throughput as a
  ratio to reading the same blob from local disk at the same concurrency (``disk``: ``O_DIRECT``,
  the disk itself; ``read``: the page cache, where the server's copy lives), and to
  copying it to a new file (``copy``, the work a download also does), and a plain ``urllib`` GET
  of the same file into memory (the server alone);
- push latency of a 1 MB adapter (``HubClient.push_folder``: preupload, LFS batch, PUT, commit);
- ``kit.load("hub://...")`` of a 32 MB LoRA on a BERT-base-sized model, cold (empty cache) and
  cached.

The hub runs as ``adapterkit hub serve`` in its own process; clients and server share this
machine's cores. Writes bench/results/hub.json and hub.md (``HUB_BENCH_QUICK=1``: one call per
client, a smoke run that writes nothing; ``HUB_BENCH_SIZES="30 MB"``: the downloads of those
sizes alone, printed and not written).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "120")  # a shared, loaded machine: no client gives up
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "120")
import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write
from hub_refs import concurrent, local_rates, pct, raw_get, static_server

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1 MB": 1 << 20, "30 MB": 30 << 20}
# calls per client and turn (two turns each for the hub and the static server)
ROUNDS = {("1 MB", 1): 15, ("1 MB", 16): 4, ("30 MB", 1): 5, ("30 MB", 16): 1}
if os.environ.get("HUB_BENCH_QUICK"):  # a smoke run of the script (its numbers mean nothing)
    ROUNDS = dict.fromkeys(ROUNDS, 1)
PART = [x.strip() for x in os.environ.get("HUB_BENCH_SIZES", "").split(",") if x.strip()]
if PART:  # only these sizes' downloads (no push, no kit.load), and nothing is written
    SIZES = {label: SIZES[label] for label in PART}


@contextmanager
def database(backend: str, pg: str | None) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    import psycopg

    name = "hubbench_" + secrets.token_hex(4)
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield str(pg).rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def hub_process(root: Path, db: str | None, code: Path | None = None,
                pids: list[int] | None = None) -> Iterator[str]:
    """``adapterkit hub serve`` in its own process; with ``code``, that source tree comes first
    on the import path (and the server's stderr is dropped). The process id is appended to ``pids``."""
    from adapterkit.hub.server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "adapterkit.cli", "hub", "serve", "--root", str(root), "--port", str(port),
           "--log-level", "warning"] + (["--db", db] if db else [])
    if code is None:
        proc = subprocess.Popen(cmd, cwd=ROOT)
    else:
        proc = subprocess.Popen(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                                stderr=subprocess.DEVNULL)
    if pids is not None:
        pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def adapter_folder(base: Path, size: int, seed: int) -> Path:
    d = Path(tempfile.mkdtemp(dir=base))
    g = torch.Generator().manual_seed(seed)
    safetensors.torch.save_file({"w": torch.randn(size // 4 - 32, generator=g)},
                                str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q"]}')
    return d


def hf_round(endpoint: str, token: str, repo: str, clients: int, calls: int,
             scratch: Path) -> tuple[list[float], float]:
    """``hf_hub_download`` into a fresh cache per call; the caches are removed after the round."""
    from huggingface_hub import hf_hub_download

    caches = Path(tempfile.mkdtemp(dir=scratch))

    def one(i: int) -> None:
        hf_hub_download(repo, "adapter_model.safetensors", endpoint=endpoint, token=token,
                        cache_dir=str(caches / str(i)))

    one(-1)  # warm the connection pool and the server's page cache
    try:
        return concurrent(clients, calls, one)
    finally:
        shutil.rmtree(caches)


def downloads(url: str, token: str, repo: str, label: str, blob: Path, scratch: Path,
              commit: str) -> list[dict[str, Any]]:
    rows, size = [], blob.stat().st_size
    with static_server(blob, commit, blob.name) as static:
        for clients in (1, 16):
            calls, lat, wall, static_wall = ROUNDS[(label, clients)], [], 0.0, 0.0
            for _rep in range(2):  # the hub and the reference server take turns
                got, took = hf_round(url, token, repo, clients, calls, scratch)
                lat, wall = lat + got, wall + took
                static_wall += hf_round(static, token, repo, clients, calls, scratch)[1]
            rate, static_rate = 2 * clients * calls * size / wall, 2 * clients * calls * size / static_wall
            local = local_rates(blob, clients, calls, scratch)
            _, raw_wall = concurrent(clients, calls, lambda _i: raw_get(url, repo, token))
            rows.append({"file": label, "clients": clients, "calls": 2 * clients * calls,
                         "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * pct(lat, 0.99),
                         "mb_per_s": rate / 1e6, "local_disk_mb_per_s": local["disk"] / 1e6,
                         "ratio_disk": rate / local["disk"], "local_read_mb_per_s": local["read"] / 1e6,
                         "local_copy_mb_per_s": local["copy"] / 1e6, "ratio_read": rate / local["read"],
                         "ratio_copy": rate / local["copy"], "static_mb_per_s": static_rate / 1e6,
                         "ratio_static": rate / static_rate,
                         "static_ratio_read": static_rate / local["read"],
                         "raw_get_mb_per_s": clients * calls * size / raw_wall / 1e6})
    return rows


def push_latency(client: Any, scratch: Path, n: int = 10) -> dict[str, float]:
    times = []
    for i in range(n):
        folder = adapter_folder(scratch, SIZES["1 MB"], seed=1000 + i)  # new bytes every push
        t = time.perf_counter()
        client.push_folder(folder, "alice/push-bench", message=f"push {i}")
        times.append(time.perf_counter() - t)
        shutil.rmtree(folder)
    return {"pushes": n, "p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * pct(times, 0.99)}


def big_lora() -> tuple[Any, Any]:
    import transformers as T

    import adapterkit as ak

    cfg = T.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    model = T.BertModel(cfg).eval()
    kit = ak.AdapterKit(model)
    kit.add("big", ak.LoRA(r=48, targets=("attn.q", "attn.k", "attn.v", "attn.out", "ffn.in", "ffn.out")))
    return cfg, kit


def load_times(url: str, token: str, scratch: Path, rounds: int = 3) -> dict[str, Any]:
    import transformers as T

    import adapterkit as ak

    cfg, kit = big_lora()
    kit.push("big", "alice/big-lora", token=token, endpoint=url)
    size = sum(p.numel() * 4 for p in kit.parameters("big"))
    from adapterkit.io.resolve import resolve

    times: dict[str, list[float]] = {"cold": [], "cached": [], "resolve_cold": [], "resolve_cached": []}
    for r in range(rounds):
        cache = scratch / f"load-cache-{r}"
        for key in ("cold", "cached"):  # the first load fills the empty cache, the second reuses it
            fresh = ak.AdapterKit(T.BertModel(cfg).eval())
            t = time.perf_counter()
            fresh.load("hub://alice/big-lora", token=token, endpoint=url, cache_dir=cache)
            times[key].append(time.perf_counter() - t)
        shutil.rmtree(cache)
        for key in ("resolve_cold", "resolve_cached"):  # the hub's share: the verified local directory
            t = time.perf_counter()
            resolve("hub://alice/big-lora", token=token, endpoint=url, cache_dir=cache)
            times[key].append(time.perf_counter() - t)
        shutil.rmtree(cache)
    return {"adapter_mb": size / 1e6, "rounds": rounds,
            **{f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}}


def run_backend(backend: str, pg: str | None) -> dict[str, Any]:
    from adapterkit.hub.admin import token_create
    from adapterkit.hub.settings import Hub
    from adapterkit.io.hub import HubClient, http

    http.TIMEOUT_S = 600.0  # a commit indexes and derives in the request: slow on a loaded machine

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-bench-")))
        db = stack.enter_context(database(backend, pg))
        state = Hub.open(scratch / "root", db)
        token = token_create(state, "alice", "write")[0]
        state.close()
        url = stack.enter_context(hub_process(scratch / "root", db))
        client = HubClient(url, token, scratch / "client-cache")
        rows = []
        for label, size in SIZES.items():
            repo = f"alice/dl-{label.replace(' ', '').lower()}"
            client.push_folder(adapter_folder(scratch, size, seed=size), repo)
            info = client.info(repo)
            sha = next(s["sha256"] for s in info["siblings"] if s["rfilename"] == "adapter_model.safetensors")
            blob = scratch / "root" / "blobs" / sha[:2] / sha[2:4] / sha
            rows += downloads(url, token, repo, label, blob, scratch, info["sha"])
        if PART:
            return {"downloads": rows}
        return {"downloads": rows, "push": push_latency(client, scratch),
                "load": load_times(url, token, scratch)}


def markdown(results: dict[str, Any]) -> str:
    load = results["load_average"]
    out = ["# Hub benchmark", "", f"`python bench/hub.py`, {results['date']}, {os.cpu_count()} CPUs "
           "shared by server and clients; huggingface_hub " + results["huggingface_hub"] + "; 1-minute "
           f"load average {load['start']:.1f} at the start and {load['end']:.1f} at the end.", ""]
    for backend, res in results["backends"].items():
        if "skipped" in res:
            out += [f"## {backend}", "", f"Not run: {res['skipped']}", ""]
            continue
        rows = [(d["file"], str(d["clients"]), f"{d['p50_ms']:.1f}", f"{d['p99_ms']:.1f}",
                 f"{d['mb_per_s']:.0f}", f"{d['local_disk_mb_per_s']:.0f}", f"{d['ratio_disk']:.2f}",
                 f"{d['local_read_mb_per_s']:.0f}", f"{d['ratio_read']:.2f}",
                 f"{d['ratio_copy']:.2f}", f"{d['static_mb_per_s']:.0f}", f"{d['static_ratio_read']:.2f}",
                 f"{d['ratio_static']:.2f}", f"{d['raw_get_mb_per_s']:.0f}") for d in res["downloads"]]
        out += [f"## {backend}", "", "`hf_hub_download`, a fresh cache per call:", "",
                table(rows, ("file", "clients", "p50 ms", "p99 ms", "MB/s", "disk MB/s", "ratio to disk",
                             "page-cache MB/s", "ratio to page cache", "ratio to copy", "static MB/s",
                             "static / page cache",
                             "hub / static", "raw GET MB/s")), "",
                "`disk`: the blob read from the disk with `O_DIRECT` (past the page cache) at the same "
                "concurrency; `page cache`: read through the page cache, which holds it. "
                "`static`: `hf_hub_download` of the same file from `bench/hub_refs.py` (the standard "
                "library's HTTP server with `sendfile`, no database), in turns with the hub: the client's "
                "own ceiling. `raw GET`: the hub's file fetched with a plain `urllib` GET into memory at "
                "the same concurrency, the server's share without the client's cache writes.", ""]
        if "push" not in res:
            continue
        p, ld = res["push"], res["load"]
        out += [f"Push of a 1 MB adapter: p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms "
                f"({p['pushes']} pushes).", "",
                f"`kit.load(\"hub://...\")` of a {ld['adapter_mb']:.0f} MB LoRA (72 sites of a "
                f"BERT-base-sized model): cold {ld['cold_ms']:.0f} ms, cached {ld['cached_ms']:.0f} ms; "
                "of that, resolving `hub://` to the verified local directory: "
                f"cold {ld['resolve_cold_ms']:.0f} ms, cached {ld['resolve_cached_ms']:.0f} ms "
                f"(medians of {ld['rounds']}).", ""]
    return "\n".join(out)


def main() -> None:
    import datetime as dt

    import huggingface_hub

    pg = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--pg=")), None) or \
        os.environ.get("ADAPTERKIT_TEST_PG")
    results: dict[str, Any] = {"date": dt.date.today().isoformat(),
                               "huggingface_hub": huggingface_hub.__version__, "backends": {},
                               "load_average": {"start": os.getloadavg()[0]}}
    for backend in ("sqlite", "postgresql"):
        if backend == "postgresql" and not pg:
            results["backends"][backend] = {"skipped": "no PostgreSQL URL (--pg=URL or $ADAPTERKIT_TEST_PG)"}
            continue
        print(f"{backend} ...", flush=True)
        results["backends"][backend] = run_backend(backend, pg)
        print(json.dumps(results["backends"][backend]), flush=True)  # kept in the log if a later part fails
    results["load_average"]["end"] = os.getloadavg()[0]
    if not os.environ.get("HUB_BENCH_QUICK") and not PART:
        write("hub", results)
        (ROOT / "bench" / "results" / "hub.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
