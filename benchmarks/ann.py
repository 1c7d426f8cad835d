"""Approximate top-k (faiss Flat / IVF / HNSW behind `recforge.retrieval.ann.VectorIndex`) against exact
search: recall@10 and queries per second, for 100k and 1M synthetic items of dimension 64 and for real
models (iALS on MovieLens 100K, the anime sample and Amazon Beauty; the retrieval two-tower on ML-100K).

Synthetic items are drawn around 2,000 Gaussian centres (clustered, as collaborative-filtering embeddings
are) with log-normal norms (popular items have larger norms). Two query sets of 2,000: *near-cluster*
queries are drawn around the items' own centres (a user who likes one kind of item); *off-cluster* queries
around 2,000 other centres (a user between kinds; the hard case for a graph index, whose links run mostly
within clusters). Two modes: *batch* (all queries in one call; exact search becomes one big matrix product)
and *single* (one query per call from 2 threads, as the service answers requests). Exact baselines, each
at its best: recforge's exact kind (matrix product + torch.topk; batches bounded to ~800 MB of scores) and
faiss's flat index (BLAS, its own blocking). `speedup` is against the faster exact search in the same
mode and query set; every QPS is the best of 3 runs (both cores of this shared machine, whose throughput
varies up to 2x between runs). HNSW is built with the library defaults (M 16, efConstruction 200) and
swept over efSearch; IVF over nprobe. Target (issue 7): HNSW on 1M x 64, recall@10 >= 0.95 at >= 5x exact.

Run: `python -m benchmarks.ann [--quick]` (quick: 100k only); writes results/ann.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks._common import RESULTS, data_dir, markdown_table, write_results
from recforge.retrieval.ann import VectorIndex

DIM = 64
K = 10
TARGET_RECALL, TARGET_SPEEDUP = 0.95, 5.0
REPEATS = 3


def synthetic(n: int, seed: int, n_centres: int = 2000, centres_seed: int | None = None) -> np.ndarray:
    """n vectors around `n_centres` Gaussian centres (drawn from `centres_seed`, default `seed`)."""
    centres = np.random.default_rng(seed if centres_seed is None else centres_seed).normal(size=(n_centres, DIM))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, n_centres, n)] + 0.6 * rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors * rng.lognormal(0.0, 0.25, size=(n, 1))).astype(np.float32)


def query_sets(n: int = 2000) -> dict[str, np.ndarray]:
    """Queries off the item clusters (other centres) and near them (the items' centres, other draws)."""
    return {"off-cluster": synthetic(n, seed=1), "near-cluster": synthetic(n, seed=7, centres_seed=0)}


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth, strict=True)]))


def batch_qps(index: VectorIndex, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Best of 3 runs: all queries per call (recforge's exact kind in blocks of <= ~800 MB of scores)."""
    batch = max(1, min(1000, int(2e8 // index.n_items))) if index.config.kind == "exact" else len(queries)
    index.search(queries[:100], K, batch_size=batch)  # warm-up
    best, found = 0.0, None
    for _ in range(REPEATS):
        started = time.perf_counter()
        found, _ = index.search(queries, K, batch_size=batch)
        best = max(best, len(queries) / (time.perf_counter() - started))
    return best, found


def single_qps(index: VectorIndex, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Best of 3 runs: one query per call from 2 threads (what the service does per request)."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda q: index.search_one(q, K), queries[:50]))  # warm-up
        best, found = 0.0, None
        for _ in range(REPEATS):
            started = time.perf_counter()
            found = np.array([items for items, _ in pool.map(lambda q: index.search_one(q, K), queries)])
            best = max(best, len(queries) / (time.perf_counter() - started))
    return best, found


MODES = {"batch": batch_qps, "single": single_qps}


def run(items: np.ndarray, query_sets: dict[str, np.ndarray], label: str, configs: dict[str, dict]) -> list[dict]:
    """Rows for every (query set, mode, index setting); exact search is timed on a subset when slow."""
    exact, flat = VectorIndex({"kind": "exact"}).build(items), VectorIndex({"kind": "flat"}).build(items)
    built = []
    for name, config in configs.items():
        started = time.perf_counter()
        sweep_key = next((k for k in config if k.endswith("_sweep")), None)
        index = VectorIndex({k: v for k, v in config.items() if k != sweep_key}).build(items)
        built.append((name, index, sweep_key, config.get(sweep_key, [None]), time.perf_counter() - started))
        print(f"{label}: built {name} in {built[-1][-1]:.1f} s", flush=True)
    rows = []
    for query_name, queries in query_sets.items():
        truth, _ = flat.search(queries, K)
        for mode, qps_of in MODES.items():
            # exact single-query search over 1M items runs at ~50-80 QPS: time it on 300 queries
            timed_queries = queries[:300] if mode == "single" and len(items) > 200_000 else queries
            base = {"data": label, "queries": query_name, "mode": mode}
            exact_qps = {n: qps_of(i, timed_queries)[0] for n, i in (("exact (recforge)", exact), ("faiss flat", flat))}
            best_exact = max(exact_qps.values())
            for name, qps in exact_qps.items():
                rows.append({**base, "index": name, "recall@10": 1.0, "qps": qps, "speedup": qps / best_exact})
            for name, index, sweep_key, values, build in built:
                for value in values:  # one build, several search-time settings
                    if sweep_key == "ef_sweep":
                        index._faiss_index.hnsw.efSearch = value
                    elif sweep_key == "nprobe_sweep":
                        if mode == "single":
                            continue  # IVF is a batch index here
                        index._faiss_index.nprobe = value
                    qps, found = qps_of(index, queries)
                    knob = {"ef_sweep": "efSearch", "nprobe_sweep": "nprobe"}.get(sweep_key)
                    setting = name if value is None else f"{name}, {knob} {value}"
                    rows.append(
                        {**base, "index": setting, "build_s": build, "recall@10": _recall(found, truth), "qps": qps}
                        | {"speedup": qps / best_exact}
                    )
                    print(rows[-1], flush=True)
    return rows


def target_lines(rows: list[dict]) -> list[str]:
    """Per query set and mode on 1M items: the fastest HNSW setting with recall@10 >= 0.95, and its speed-up
    over recforge's exact search (the issue's "exact search") and over the faster of the two exact ones."""
    lines = []
    million = [r for r in rows if r["data"].startswith("synthetic 1,000,000")]
    for query_name in dict.fromkeys(r["queries"] for r in million):
        for mode in MODES:
            same = [r for r in million if r["queries"] == query_name and r["mode"] == mode]
            ours = next(r["qps"] for r in same if r["index"] == "exact (recforge)")
            best_exact = max(r["qps"] for r in same if r["index"] in ("exact (recforge)", "faiss flat"))
            good = [r for r in same if "HNSW" in r["index"] and r["recall@10"] >= TARGET_RECALL]
            if not good:
                lines.append(f"- {query_name}, {mode}: not met (no setting reached recall@10 {TARGET_RECALL})")
                continue
            best = max(good, key=lambda r: r["qps"])
            verdicts = [
                f"{best['qps'] / qps:.1f}x {name} ({'met' if best['qps'] / qps >= TARGET_SPEEDUP else 'NOT met'})"
                for name, qps in (("recforge's exact search", ours), ("the faster exact search", best_exact))
            ]
            lines.append(
                f"- {query_name} queries, {mode}: {best['index']}: recall@10 {best['recall@10']:.3f} at "
                f"{best['qps']:,.0f} QPS = " + "; ".join(verdicts)
            )
    return lines


def render(rows: list[dict], suffix: str = "") -> None:
    columns = ["data", "queries", "mode", "index", "build_s", "recall@10", "qps", "speedup"]
    markdown = [
        "# Approximate top-k",
        "",
        __doc__.split("\n\n")[1],
        "",
        f"Target (recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x exact search, 1M x 64):",
        *target_lines(rows),
        "",
        markdown_table(rows, columns),
        "",
    ]
    write_results("ann" + suffix, {"rows": rows}, "\n".join(markdown))


def real_models() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, item vectors, user vectors) of models trained on the real datasets."""
    from recforge.data.loaders import load_amazon_sequences, load_anime_kaggle, load_movielens_100k
    from recforge.models import create_model

    root = data_dir()
    ml100k = load_movielens_100k(root / "ml-100k")
    out = []
    for label, data in [
        ("ML-100K", ml100k),
        ("anime sample", load_anime_kaggle(root / "anime-kaggle")),
        ("Amazon Beauty", load_amazon_sequences(root / "amazon-beauty")),
    ]:
        model = create_model("ials", n_factors=64).fit(data)
        out.append((f"iALS {label} ({data.n_items:,} items)", model.item_embeddings(), model.user_embeddings()))
    tower = create_model("two_tower").fit(ml100k)
    out.append((f"two-tower ML-100K ({ml100k.n_items:,} items)", tower.item_embeddings(), tower.user_embeddings()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from results/ann.json only")
    args = parser.parse_args()
    if args.render:
        render(json.loads((RESULTS / "ann.json").read_text())["rows"])
        return
    configs = {
        "faiss IVF (nlist 4√n)": {"kind": "ivf", "nprobe_sweep": [16, 64, 128, 256]},
        "faiss HNSW (M 16, efConstruction 200)": {"kind": "hnsw", "m": 16, "ef_sweep": [64, 128, 192, 256, 384, 512]},
    }
    rows: list[dict] = []
    for n in [100_000] if args.quick else [100_000, 1_000_000]:
        rows += run(synthetic(n, seed=0), query_sets(), f"synthetic {n:,} x 64", configs)
    for label, items, users in real_models():
        rows += run(items, {"users": users}, label, {"faiss HNSW (M 16, efSearch 128)": {"kind": "hnsw", "m": 16}})
    render(rows, "_quick" if args.quick else "")


if __name__ == "__main__":
    main()
