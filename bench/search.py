"""Hub search at 100,000 adapter cards, on SQLite and on PostgreSQL (``--pg URL`` or
``$ADAPTERKIT_TEST_PG``; without one only SQLite runs, and the results say so).

Seeds synthetic cards (bench/search_data.py: realistic text from vocabularies of tasks, domains,
languages, methods, base models and licences) straight into each database through the index
code (``catalog.document.compose`` and ``catalog.indexer.store_new``), then times
``search_repos`` (the service behind ``GET /api/models`` and ``POST /api/models/search``, without
HTTP) for full text, semantic search exact (numpy over every vector) and approximate (usearch
HNSW, with recall@10 against exact), and hybrid search with filters, the two back ends
interleaved query by query. Query vectors are computed once per query before the timed runs
(the server keeps recent ones); their cost is reported on its own, as is the upload-time cost of
embedding one card and of the Arrow prototypes (``adapterkit.hub.derived.upload_cost``: prototypes
and weight embedding of a SmolLM2-135M-shaped r=8 LoRA).

Embedding 100,000 cards with MiniLM on shared CPUs takes hours, so ``--pool`` distinct cards are
embedded exactly and every other card gets ``normalise(E[a] + 0.5 E[b])``, where ``a`` is a pool
card with the same task and domain and ``b`` one with the same language (both picked by the card
number). Writes bench/results/search.json and search.md (``SEARCH_BENCH_QUICK=1``: a small smoke
run that writes nothing). The seeded databases and the vectors are kept under ``runs/search/``
(bench/search_cache.py), so a rerun with the same settings skips seeding; ``--reseed`` seeds
again, ``--seed-only`` seeds (when needed) and stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write
from hub import pct
from search_data import filters, fingerprint_of, semantic_queries, text_queries
from search_seed import Cache, cache_key, open_hubs, prepare

from adapterkit.hub.accounts import Caller
from adapterkit.hub.catalog.embed import embedder, query_vector
from adapterkit.hub.catalog.service import search_repos
from adapterkit.hub.catalog.vectors import index_for
from adapterkit.hub.settings import Hub

QUICK = bool(os.environ.get("SEARCH_BENCH_QUICK"))
ANN_AT = 20_000  # the default search_exact_max


def upload_embed_cost(docs: list[Any], n: int) -> dict[str, float]:
    """Milliseconds to embed one card's summary, as an upload does (one text at a time)."""
    emb = embedder()
    times = []
    for d in docs[-n:]:
        t0 = time.perf_counter()
        emb.embed([d.summary])
        times.append((time.perf_counter() - t0) * 1000)
    return {"cards": n, "p50_ms": round(pct(times, 0.5), 2), "p99_ms": round(pct(times, 0.99), 2),
            "mean_ms": round(statistics.fmean(times), 2)}


def set_exact_max(hub: Hub, n: int) -> None:
    hub.settings = dataclasses.replace(hub.settings, search_exact_max=n)


def kinds(hub: Hub, caller: Caller, fp: dict[str, Any]) -> dict[str, Callable[[int], Any]]:
    """One query of each timed kind, by query number."""
    texts, sems, filt = QUERIES["text"], QUERIES["semantic"], QUERIES["filters"]

    def exact(i: int) -> Any:
        set_exact_max(hub, 10**9)
        return search_repos(hub, caller, sems[i], mode="semantic", limit=10)

    def ann(i: int) -> Any:
        set_exact_max(hub, ANN_AT)
        return search_repos(hub, caller, sems[i], mode="semantic", limit=10)

    return {
        "full-text": lambda i: search_repos(hub, caller, texts[i], mode="text", limit=10),
        "semantic-exact": exact,
        "semantic-ANN": ann,
        "hybrid+filters": lambda i: (set_exact_max(hub, ANN_AT),
                                     search_repos(hub, caller, sems[i], mode="hybrid", limit=10, **filt[i])),
        "hybrid+compatible": lambda i: search_repos(hub, caller, sems[i], mode="hybrid", limit=10,
                                                    compatible_with=fp),
    }


QUERIES: dict[str, list[Any]] = {}


def recall(hub: Hub, n: int) -> dict[str, float]:
    """recall@10 of the HNSW index against exact search, over the vector index itself and over
    what ``search_repos`` answers (read access applied)."""
    index = index_for(hub.db, embedder().stamp, ANN_AT)
    caller = CALLER
    raw, served = [], []
    for q in QUERIES["semantic"][:n]:
        v = query_vector(q)
        truth = {i for i, _ in index.exact(v, 10)}
        raw.append(len(truth & {i for i, _ in index.approximate(v, 10)}) / 10)
        set_exact_max(hub, 10**9)
        a = {h.repo_id for h in search_repos(hub, caller, q, mode="semantic", limit=10)}
        set_exact_max(hub, ANN_AT)
        b = {h.repo_id for h in search_repos(hub, caller, q, mode="semantic", limit=10)}
        served.append(len(a & b) / max(len(a), 1))
    return {"index_recall_at_10": round(statistics.fmean(raw), 4),
            "search_recall_at_10": round(statistics.fmean(served), 4), "queries": n}


CALLER = Caller(user_id=1, name="bench", scope="read", token_id=0, token_prefix="bench",
                roles={k + 2: "read" for k in range(50)})  # a reader of 50 of the 500 organisations


def timed(hubs: dict[str, Hub], n: int) -> dict[str, dict[str, dict[str, float]]]:
    fp = fingerprint_of("bert-base-uncased")
    runs = {b: kinds(h, CALLER, fp) for b, h in hubs.items()}
    times: dict[str, dict[str, list[float]]] = {b: {k: [] for k in runs[b]} for b in hubs}
    for kind in next(iter(runs.values())):
        for i in range(n):
            for backend, fns in runs.items():  # the back ends interleave, query by query
                t0 = time.perf_counter()
                fns[kind](i)
                times[backend][kind].append((time.perf_counter() - t0) * 1000)
    return {b: {k: {"p50_ms": round(pct(v, 0.5), 2), "p99_ms": round(pct(v, 0.99), 2),
                    "mean_ms": round(statistics.fmean(v), 2), "queries": len(v)} for k, v in kinds_.items()}
            for b, kinds_ in times.items()}


def warm(hubs: dict[str, Hub]) -> dict[str, Any]:
    """Embed every query once (timed: the query embedding cost), load each vector index and
    build its HNSW graph (timed), and run each kind a few times untimed."""
    out: dict[str, Any] = {}
    times = []
    for q in QUERIES["semantic"]:
        t0 = time.perf_counter()
        query_vector(q)
        times.append((time.perf_counter() - t0) * 1000)
    out["query_embedding"] = {"p50_ms": round(pct(times, 0.5), 2), "p99_ms": round(pct(times, 0.99), 2),
                              "queries": len(times)}
    for backend, hub in hubs.items():
        index = index_for(hub.db, embedder().stamp, ANN_AT)
        t0 = time.perf_counter()
        with hub.db.read() as s:
            index.refresh(s)
        t1 = time.perf_counter()
        index.build_ann()
        out[backend] = {"vectors_loaded": index.n, "load_s": round(t1 - t0, 2),
                        "hnsw_build_s": round(time.perf_counter() - t1, 2)}
        for fn in kinds(hub, CALLER, fingerprint_of("bert-base-uncased")).values():
            for i in range(3):
                fn(i)
    return out


def prototype_cost() -> dict[str, Any]:
    try:
        from adapterkit.hub.derived import upload_cost
    except ImportError as exc:
        return {"measured": False, "why": f"the artifacts code is not installed here ({exc})"}
    return {"measured": True, **upload_cost()}


def markdown(r: dict[str, Any]) -> str:
    backends = list(r["latency"])
    rows = [(kind, *(f"{r['latency'][b][kind]['p50_ms']:.1f} / {r['latency'][b][kind]['p99_ms']:.1f}"
                     for b in backends)) for kind in r["latency"][backends[0]]]
    qe, up, rc = r["warm"]["query_embedding"], r["upload"]["embedding"], r["recall"]
    lines = [f"# Hub search at {r['cards']:,} cards",
             "", f"`{r['command']}`; load average {r['load_average']['start']:.2f} at the start, "
             f"{r['load_average']['end']:.2f} at the end (1 minute, {os.cpu_count()} CPUs).", "",
             "Latency of `search_repos` (the service behind `GET /api/models` and `POST /api/models/search`, "
             "no HTTP), limit 10, as a reader of 50 of the 500 organisations; p50 / p99 in ms; the query "
             "vector is computed beforehand (its cost is below):", "",
             table(rows, ("query kind", *[f"{b} p50 / p99 ms" for b in backends])), "",
             f"- ANN (usearch HNSW, connectivity 16, expansion 128) recall@10 against exact: "
             f"{rc['index_recall_at_10']:.3f} on the vector index, {rc['search_recall_at_10']:.3f} on the "
             f"hits `search_repos` returns ({rc['queries']} queries).",
             f"- Embedding a query (MiniLM, one thread, once per distinct query): p50 {qe['p50_ms']:.1f} ms, "
             f"p99 {qe['p99_ms']:.1f} ms.",
             f"- Upload-time embedding of one card: p50 {up['p50_ms']:.1f} ms, p99 {up['p99_ms']:.1f} ms "
             f"({up['cards']} cards, one at a time).",
             f"- Vectors: {r['vectors']['pool']:,} distinct cards embedded exactly "
             f"({r['vectors']['pool_texts_per_s']:.0f} texts/s in batches of 64); the other cards get "
             "`normalise(E[a] + 0.5 E[b])`, `a` a pool card with the same task and domain, `b` one with the "
             "same language."]
    proto = r["upload"]["prototypes"]
    if proto.get("measured"):
        shown = ", ".join(f"{k} {v}" for k, v in proto.items() if k != "measured")
        lines.append("- Upload-time Arrow prototypes and weight embedding "
                     f"(`adapterkit.hub.derived.upload_cost`): {shown}.")
    else:
        lines.append(f"- Prototypes: not measured ({proto['why']}).")
    for b in backends:
        w, seeded = r["warm"][b], r["seed_s"][b]
        lines.append(f"- {b}: seeded in {seeded:.0f} s; {w['vectors_loaded']:,} vectors loaded in "
                     f"{w['load_s']:.1f} s, HNSW built in {w['hnsw_build_s']:.1f} s.")
    if "postgresql" not in backends:
        lines.append("- PostgreSQL: not run (no --pg and no $ADAPTERKIT_TEST_PG).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cards", type=int, default=2000 if QUICK else 100_000)
    ap.add_argument("--pool", type=int, default=200 if QUICK else 3000)
    ap.add_argument("--queries", type=int, default=20 if QUICK else 200)
    ap.add_argument("--pg", default=os.environ.get("ADAPTERKIT_TEST_PG"))
    ap.add_argument("--reseed", action="store_true", help="seed again instead of using runs/search/")
    ap.add_argument("--seed-only", action="store_true", help="seed the cached databases, time nothing")
    ap.add_argument("--render", action="store_true", help="only rewrite search.md from search.json")
    args = ap.parse_args()
    if args.render:
        path = Path(__file__).resolve().parent / "results" / "search.json"
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    load0 = os.getloadavg()[0]
    backends = ["sqlite"] + (["postgresql"] if args.pg else [])
    cache = Cache(cache_key(args.cards, args.pool, embedder().stamp), args.reseed)
    docs, vec_info = prepare(args, cache, backends)
    with ExitStack() as stack:
        hubs = open_hubs(stack, args, cache, backends)
        if args.seed_only:
            return
        QUERIES.update(text=text_queries(args.queries), semantic=semantic_queries(args.queries),
                       filters=filters(args.queries))
        upload = {"embedding": upload_embed_cost(docs, 20 if QUICK else 200), "prototypes": prototype_cost()}
        warmed = warm(hubs)
        latency = timed(hubs, args.queries)
        recalls = recall(hubs["sqlite"], args.queries)
    shown = [a if a != args.pg else "$ADAPTERKIT_TEST_PG" for a in sys.argv[1:]]
    results = {"cards": args.cards, "command": " ".join(["python bench/search.py", *shown]),
               "load_average": {"start": load0, "end": os.getloadavg()[0]}, "vectors": vec_info,
               "upload": upload, "seed_s": {b: cache.meta["seed_s"][b] for b in backends},
               "warm": warmed, "latency": latency, "recall": recalls}
    md = markdown(results)
    print(md)
    if not QUICK:
        path = write("search", results)
        path.with_suffix(".md").write_text(md)
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
