"""Load test of `recforge serve`: N concurrent clients on loopback for T seconds, each asking
`GET /users/{id}/recommendations?k=10` for random known users and, for a fraction of its requests (10% by
default), posting one interaction for a random user (`POST /users/{id}/interactions`, committed to the
SQLite event store before the answer); reports throughput, p50/p95/p99 latency of reads and of writes,
and errors.

The model: iALS (64 factors) trained on 1M synthetic interactions (`recforge.data.synthetic`: power-law
popularity, genre-shaped latent tastes) of 20,000 users over 100,000 items, saved as an artifact with or
without an HNSW index (16 links per node, ef_search 64; `recall@10` is what the served index returns
against exact search), served by `recforge serve` in its own process(es). Clients are keep-alive HTTP/1.1
connections on asyncio with uvloop (a minimal client: httpx cost more CPU per request than the server) in
a separate process, so client and server share this machine's 2 cores (the numbers include that contention).

Run: `python -m benchmarks.serve_load [--clients 32] [--seconds 20] [--runs 3] [--writes 0.1]
[--settings none:1,hnsw:2,...] [--keyed]`; writes results/serve_load.json and .md. Target: p99 <= 25 ms over all
requests with 32 clients, 10% writes, zero errors; the writes' p99 is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_results

N_ITEMS = 100_000
N_USERS = 20_000
# HNSW with 16 links per node and ef_search 64: served recall@10 0.982 against exact search in ~85 µs per
# query; 32 links gave 0.978 in ~125 µs (a denser graph is not better for 66-dimensional factor vectors)
HNSW = {"kind": "hnsw", "m": 16, "ef_search": 64}
TOKEN = "serve-load-benchmark-token"


def build_artifact(folder: Path, index: str) -> Path:
    from recforge.artifacts import index_writers
    from recforge.data.interactions import Interactions
    from recforge.data.synthetic import SyntheticConfig, synthetic_interactions
    from recforge.data.vocabulary import Vocabulary
    from recforge.models import create_model
    from recforge.retrieval.ann import VectorIndex

    events, _ = synthetic_interactions(SyntheticConfig(n_users=N_USERS, n_items=N_ITEMS, n_interactions=1_000_000))
    data = Interactions(  # every catalogue item is a candidate, including the ~18% nobody touched
        users=Vocabulary(np.arange(N_USERS), "user"),
        items=Vocabulary(np.arange(N_ITEMS), "item"),
        user_index=events["user_id"].to_numpy(),
        item_index=events["item_id"].to_numpy(),
        name="synthetic-100k-items",
    )
    model = create_model("ials", n_factors=64, n_iterations=5).fit(data)
    config = HNSW if index == "hnsw" else {"kind": index}
    extra = {} if index == "none" else index_writers(VectorIndex(config).build(model.item_embeddings()))
    return model.save(folder / "model", extra_files=extra)


def served_recall(artifact: Path, n_users: int = 1000) -> float | None:
    """recall@10 of what the service answers (through its index, seen items excluded) against exact search."""
    from recforge.retrieval.ann import VectorIndex
    from recforge.serving.service import RecommenderService

    service = RecommenderService.from_artifact(artifact)
    if service.index is None:
        return None
    model = service.model
    users = np.random.default_rng(1).choice(model.n_users, n_users, replace=False)
    queries, seen = model.user_embeddings(users), model.seen_[users]
    exact, _ = VectorIndex({"kind": "exact"}).build(model.item_embeddings()).search(queries, 10, seen)
    served = [service.index.search_one(query, 10, row.indices)[0] for query, row in zip(queries, seen, strict=True)]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, served, strict=True)]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def client_loop(
    base: str,
    users: np.ndarray,
    stop_at: float,
    writes: float,
    timings: dict[str, list[float]],
    errors: list[int],
    keyed: bool = False,
) -> None:
    """One keep-alive connection sending requests back to back. A minimal HTTP/1.1 client on asyncio streams:
    httpx spent ~1.5 ms of CPU per request, more than the server, on the same two cores. Each answer is
    still checked: a read's status 200 and a JSON body with exactly 10 items, a write's 200 with its seq.
    `keyed`: every write carries a new Idempotency-Key (a UUID), so each is looked up before it commits."""
    host, port = base.removeprefix("http://").split(":")
    rng = np.random.default_rng(os.getpid() ^ id(timings) & 0xFFFF ^ id(errors) & 0xFFFF0000)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # which worker has this connection
    timings.setdefault("workers", []).append(json.loads((await _read_response(reader))[1])["worker"])
    try:
        while time.perf_counter() < stop_at:
            user = int(users[rng.integers(len(users))])
            is_write = rng.random() < writes
            if is_write:
                body = json.dumps({"items": [{"item": int(rng.integers(N_ITEMS))}]}).encode()
                key = f"Idempotency-Key: {uuid.uuid4()}\r\n" if keyed else ""
                request = (
                    f"POST /users/{user}/interactions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/json\r\n{key}Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
            else:
                request = f"GET /users/{user}/recommendations?k=10 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            started = time.perf_counter()
            try:
                writer.write(request)
                status, answer = await _read_response(reader)
                parsed = json.loads(answer)
                ok = status == 200 and (
                    parsed["seq"] > 0 and not parsed["replayed"] if is_write else len(parsed["items"]) == 10
                )
            except (OSError, ValueError, KeyError, asyncio.IncompleteReadError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            timings["writes" if is_write else "reads"].append((time.perf_counter() - started) * 1e3)
            if not ok:
                errors.append(1)
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    length = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length")
    if length is None:
        raise ValueError("response without content-length")
    return status, await reader.readexactly(int(length))


def client_process(
    base: str, n_clients: int, seconds: float, writes: float, start_at: float, queue, keyed: bool = False
) -> None:
    async def main() -> None:
        users = np.arange(N_USERS)
        timings: dict[str, list[float]] = {"reads": [], "writes": []}
        errors: list[int] = []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(
            *(client_loop(base, users, stop_at, writes, timings, errors, keyed) for _ in range(n_clients))
        )
        queue.put((timings, len(errors)))

    try:  # the client shares the server's two cores: uvloop (installed with recforge[serve]) costs it less CPU
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def load(base: str, clients: int, seconds: float, processes: int, writes: float, keyed: bool = False) -> dict:
    queue = multiprocessing.Queue()
    start_at = time.time() + 1.0
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = [
        multiprocessing.Process(target=client_process, args=(base, share, seconds, writes, start_at, queue, keyed))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    workers = [pid for r in results for pid in r[0].get("workers", [])]
    reads = np.concatenate([np.asarray(r[0]["reads"]) for r in results])
    written = np.concatenate([np.asarray(r[0]["writes"]) for r in results])
    every = np.concatenate([reads, written])
    return {
        "requests": len(every),
        "writes": len(written),
        "errors": int(sum(r[1] for r in results)),
        "rps": len(every) / seconds,
        "p50_ms": float(np.percentile(every, 50)),
        "p95_ms": float(np.percentile(every, 95)),
        "p99_ms": float(np.percentile(every, 99)),
        "reads_p99_ms": float(np.percentile(reads, 99)) if len(reads) else None,
        "writes_p50_ms": float(np.percentile(written, 50)) if len(written) else None,
        "writes_p99_ms": float(np.percentile(written, 99)) if len(written) else None,
        # keep-alive connections per server worker at the start (a busier worker has a longer queue)
        "connections per worker": sorted((workers.count(pid) for pid in set(workers)), reverse=True),
    }


TARGET_P99_MS = 25.0


def cpu_speed_ms(repeats: int = 30) -> float:
    """Median milliseconds of a fixed pure-Python loop on one core, taken just before a run: this shared
    machine's speed moved by 2x within an hour (3.8 ms and 7.7 ms), and requests/s and p99 move with it,
    so every row carries the speed it was measured at."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def summary_lines(rows: list[dict]) -> list[str]:
    """Per setting: the p99 range over its runs and how many runs met the target (p99 <= 25 ms, no errors)."""
    lines = []
    for index, workers in dict.fromkeys((r["index"], r["server workers"]) for r in rows):
        runs = [r for r in rows if (r["index"], r["server workers"]) == (index, workers)]
        met = sum(r["p99_ms"] <= TARGET_P99_MS and r["errors"] == 0 for r in runs)
        p99 = [r["p99_ms"] for r in runs]
        writes = [r["writes_p99_ms"] for r in runs if r.get("writes_p99_ms") is not None]
        write_part = f"; writes' p99 {min(writes):.1f}–{max(writes):.1f} ms" if writes else ""
        speeds = [r["cpu_speed_ms"] for r in runs if r.get("cpu_speed_ms") is not None]
        speed_part = f" (machine speed {min(speeds):.1f}–{max(speeds):.1f} ms per loop)" if speeds else ""
        lines.append(
            f"- index {index}, {workers} server worker(s): p99 {min(p99):.1f}–{max(p99):.1f} ms over {len(runs)} "
            f"run(s){write_part}, {sum(r['errors'] for r in runs)} errors; target met in {met} of {len(runs)}"
            + speed_part
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--settings", default="none:1,none:2,hnsw:1,hnsw:2", help="index:workers pairs to measure")
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (the shared cores' tail varies)")
    parser.add_argument("--writes", type=float, default=0.1, help="fraction of requests that are writes")
    parser.add_argument("--keyed", action="store_true", help="every write carries a new Idempotency-Key")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in [s for s in args.settings.split(",") for _ in range(args.runs)]:
            index, workers = setting.split(":")
            artifact = (
                build_artifact(Path(tmp) / index, index)
                if not (Path(tmp) / index).exists()
                else Path(tmp) / index / "model"
            )
            port = free_port()
            store = Path(tmp) / f"events-{len(rows)}.sqlite"  # every run starts from an empty log
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            env["RECFORGE_TOKEN"] = TOKEN
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "recforge.cli",
                    "serve",
                    "--model",
                    str(artifact),
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                    "--store",
                    f"sqlite:///{store}",
                ],
                env=env,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_ready(base, server)
                load(base, args.clients, 2.0, 1, 0.0)  # warm-up, reaching every worker
                row = {
                    "cpu_speed_ms": cpu_speed_ms(),
                    "items": N_ITEMS,
                    "index": index,
                    "server workers": int(workers),
                    "clients": args.clients,
                    "seconds": args.seconds,
                    "write share": args.writes,
                    "keyed writes": args.keyed,
                    "recall@10": served_recall(artifact),
                    **load(base, args.clients, args.seconds, args.client_processes, args.writes, args.keyed),
                }
            finally:
                server.terminate()
                server.wait(timeout=30)
            rows.append(row)
            print(row)
    markdown = [
        "# Serving load test",
        "",
        __doc__.split("\n\n")[1],
        "",
        __doc__.split("\n\n")[2],
        "",
        *summary_lines(rows),
        "",
        markdown_table(
            rows,
            [
                "cpu_speed_ms",
                "items",
                "index",
                "recall@10",
                "server workers",
                "clients",
                "requests",
                "writes",
                "errors",
                "rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "reads_p99_ms",
                "writes_p50_ms",
                "writes_p99_ms",
                "connections per worker",
            ],
        ),
        "",
    ]
    write_results("serve_load", {"rows": rows}, "\n".join(markdown))


def _wait_ready(base: str, server: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server is not None and server.poll() is not None:  # a failed start: say so now, not in 120 s
            raise RuntimeError(f"the service at {base} exited during start-up (status {server.returncode})")
        try:
            if httpx.get(base + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service at {base} did not become ready in {timeout} s")


if __name__ == "__main__":
    main()
