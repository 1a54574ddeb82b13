"""Recall latency and ingestion as memory grows: 1K, 10K and 100K episodes over 1,000 users.

    .venv/bin/python bench/memory.py [--quick] [--users N] [--queries Q]

Keel's layout (Qdrant local mode under a fresh KEEL_HOME, on disk as by default: each kind
partitioned by user, every search filtered by user; the embedded SQLite graph with facts for
every user) is measured through the recall path the `recall` activity runs: embed the query
with MiniLM, top-k episodes, the user's facts, similar cache entries, the token-budgeted
context. The baseline is the same recall over one unpartitioned episodes collection (local
mode keeps no payload index, so it has no tenant index either), in the same run. Local mode
searches in memory whether or not it persists, so the baseline skips the disk writes to save
minutes, not query time.

Episode texts come from templates; vectors for the bulk load are taken from a pool of real
MiniLM embeddings of those texts (embedding 100K texts would take minutes and measures the
embedder, not memory). `ingest_per_s` is the real `remember` path, one episode at a time
(embed + upsert to disk), as the activity runs it.

Prints a table and writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from qdrant_client import QdrantClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.memory.activity import MemoryActivities  # noqa: E402
from activities.memory.cache import Cache  # noqa: E402
from activities.memory.documents import DocumentStore  # noqa: E402
from activities.memory.embedding import MiniLMEmbedder  # noqa: E402
from activities.memory.episodes import KIND, EpisodeStore, episode_id  # noqa: E402
from activities.memory.graph_sqlite import SqliteGraphStore  # noqa: E402
from activities.memory.vectors import VectorStore  # noqa: E402
from bench.report import print_summary, save  # noqa: E402
from keel.contracts import Episode, RecallRequest, Triple  # noqa: E402
from keel.settings import Settings  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
TOPICS = [
    "deploy",
    "invoice",
    "rollback",
    "database",
    "budget",
    "report",
    "latency",
    "backup",
    "release",
    "onboarding",
    "incident",
    "migration",
    "pricing",
    "forecast",
    "audit",
]
ACTIONS = [
    "summarise the",
    "compare the",
    "explain the",
    "plan the",
    "check the",
    "fix the",
    "estimate the",
    "review the",
    "draft the",
    "list the",
]
OBJECTS = ["for team {n}", "of service {n}", "in region {n}", "for quarter {n}", "of customer {n}"]


def texts(count: int, rng: random.Random) -> list[str]:
    made = []
    for _ in range(count):
        where = rng.choice(OBJECTS).format(n=rng.randrange(50))
        made.append(f"{rng.choice(ACTIONS)} {rng.choice(TOPICS)} {where}")
    return made


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bulk_load(
    vectors: VectorStore,
    start: int,
    stop: int,
    users: list[str],
    pool: list[tuple[str, list[float]]],
    rng: random.Random,
) -> float:
    """Episodes [start, stop) in batches, as a fleet of tasks would leave them; returns /s."""
    began = time.perf_counter()
    for lo in range(start, stop, 512):
        batch = []
        for i in range(lo, min(stop, lo + 512)):
            text, vector = pool[rng.randrange(len(pool))]
            user = users[i % len(users)]
            payload = {
                "user_id": user,
                "task": text,
                "answer": "done",
                "status": "completed",
                "workflow_id": f"wf-{i}",
                "stored_at": time.time(),
            }
            batch.append(((episode_id(user, f"wf-{i}"), text, payload), vector))
        vectors.upsert(KIND, [p for p, _ in batch], [v for _, v in batch])
    return (stop - start) / (time.perf_counter() - began)


def measure(
    memory: MemoryActivities, users: list[str], queries: int, rng: random.Random
) -> tuple[float, float, float]:
    """Whole-recall p50 and p95, and the p95 of the episode search alone, in ms."""
    for query in texts(5, rng):  # warm up: first touches of the shards and the graph
        memory._recall(RecallRequest(user_id=rng.choice(users), query=query, limit=3))
    latencies, searches = [], []
    for query in texts(queries, rng):
        request = RecallRequest(user_id=rng.choice(users), query=query, limit=3)
        began = time.perf_counter()
        memory._recall(request)
        latencies.append((time.perf_counter() - began) * 1000)
        [vector] = memory.episodes.vectors.embedder.embed([query])
        began = time.perf_counter()
        memory.episodes.recall(request.user_id, vector, request.limit)
        searches.append((time.perf_counter() - began) * 1000)
    return statistics.median(latencies), percentile(latencies, 0.95), percentile(searches, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries (about 4 min)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=None, help="recalls per size")
    args = parser.parse_args()
    queries = args.queries or (60 if args.quick else 300)
    baseline_queries = max(10, queries // 6)
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(args.users)]

    embedder = MiniLMEmbedder()
    print("embedding the text pool ...", flush=True)
    pool_texts = sorted(set(texts(3000, rng)))
    pool = list(zip(pool_texts, embedder.embed(pool_texts), strict=True))

    home = Path(tempfile.mkdtemp(prefix="keel-bench-memory-"))
    vectors = VectorStore.open(embedder, home / "qdrant")
    graph = SqliteGraphStore(home / "graph.sqlite")
    now = datetime.now(UTC)
    for i, user in enumerate(users):
        graph.assert_facts(
            user,
            [
                Triple(
                    subject="user",
                    relation="preferred_language",
                    object=random.Random(i).choice(["Python", "Go", "Rust"]),
                ),
                Triple(subject="user", relation="team", object=f"team {i % 50}"),
            ],
            now,
            f"bench-{i}",
        )
    threads = Settings().memory_threads
    memory = MemoryActivities(
        EpisodeStore(vectors),
        DocumentStore(vectors),
        graph,
        Cache(vectors, 0.92, 3600),
        400,
        threads,
    )

    baseline = VectorStore(QdrantClient(":memory:"), embedder, shards=1, where=":memory:")
    baseline_memory = MemoryActivities(
        EpisodeStore(baseline),
        DocumentStore(baseline),
        graph,
        Cache(vectors, 0.92, 3600),
        400,
        threads,
    )

    # the baseline's one big collection is the case local mode warns about; that is the point
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    rows = []
    loaded = 0
    for size in SIZES:
        print(f"loading {size} episodes ...", flush=True)
        rate = bulk_load(vectors, loaded, size, users, pool, rng)
        bulk_load(baseline, loaded, size, users, pool, random.Random(size))
        loaded = size
        p50, p95, search95 = measure(memory, users, queries, rng)
        b50, b95, bsearch95 = measure(baseline_memory, users, baseline_queries, rng)
        rows.append(
            {
                "episodes": size,
                "p50_ms": round(p50, 2),
                "p95_ms": round(p95, 2),
                "baseline_p50_ms": round(b50, 2),
                "baseline_p95_ms": round(b95, 2),
                "search_p95_ms": round(search95, 2),
                "baseline_search_p95_ms": round(bsearch95, 2),
                "bulk_ingest_per_s": round(rate, 1),
            }
        )
        print(
            f"  keel p50 {p50:.2f} ms p95 {p95:.2f} ms | baseline p50 {b50:.2f} p95 {b95:.2f}"
            f" | bulk ingest {rate:.0f}/s",
            flush=True,
        )

    store = EpisodeStore(vectors)  # the activity's path: one episode at a time, embedded
    sample = texts(200 if args.quick else 1000, rng)
    began = time.perf_counter()
    for i, text in enumerate(sample):
        store.remember(
            f"ingest-{i}",
            Episode(
                id="", user_id=users[i % len(users)], task=text, answer="done", status="completed"
            ),
        )
    ingest_per_s = len(sample) / (time.perf_counter() - began)
    vectors.close()
    graph.close()

    summary = {
        "p95_ms_1k": rows[0]["p95_ms"],
        "p95_ms_10k": rows[1]["p95_ms"],
        "p95_ms_100k": rows[2]["p95_ms"],
        "p50_ms_100k": rows[2]["p50_ms"],
        "baseline_p95_ms_100k": rows[2]["baseline_p95_ms"],
        "growth_ratio": round(rows[2]["p95_ms"] / rows[0]["p95_ms"], 2),
        "p50_growth_ratio": round(rows[2]["p50_ms"] / rows[0]["p50_ms"], 2),
        "baseline_growth_ratio": round(rows[2]["baseline_p95_ms"] / rows[0]["baseline_p95_ms"], 2),
        "search_growth_ratio": round(rows[2]["search_p95_ms"] / rows[0]["search_p95_ms"], 2),
        "ingest_per_s": round(ingest_per_s, 1),
        "users": args.users,
        "queries_per_size": queries,
        "baseline_queries_per_size": baseline_queries,
    }
    print()
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")
    print_summary(summary)
    save("memory", {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
