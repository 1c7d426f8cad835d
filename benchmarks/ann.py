"""Approximate top-k (faiss Flat / IVF / HNSW behind `recforge.retrieval.ann.VectorIndex`) against exact
search: recall@10 and queries per second, for 100k and 1M synthetic items of dimension 64 and for a real
model (iALS on MovieLens 100K).

Synthetic vectors imitate trained embeddings: items are drawn around 2,000 Gaussian centres (clustered,
as collaborative-filtering embeddings are) with log-normal norms (popular items have larger norms);
queries are drawn the same way. Uniform random 64-d vectors would be a worst case no trained model makes.
Exact search is recforge's batched matrix product + argpartition (numpy BLAS on all cores); QPS counts
queries answered per wall second with 1,000-query batches for both, on this machine.

Run: `python benchmarks/ann.py [--quick]` (quick: 100k only); writes results/ann.json and .md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import data_dir, markdown_table, write_results
from recforge.retrieval.ann import VectorIndex

DIM = 64


def synthetic(n: int, seed: int, n_centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, n_centres, n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors * rng.lognormal(0.0, 0.25, size=(n, 1))).astype(np.float32)


def measure(index: VectorIndex, queries: np.ndarray, truth: np.ndarray | None, k: int = 10) -> dict:
    batch = max(1, min(1000, int(2e8 // index.n_items)))  # bounds the exact score block to ~800 MB
    index.search(queries[:100], k, batch_size=batch)  # warm-up
    started = time.perf_counter()
    found, _ = index.search(queries, k, batch_size=batch)
    seconds = time.perf_counter() - started
    row = {"qps": len(queries) / seconds}
    if truth is not None:
        row["recall@10"] = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, truth, strict=True)]))
    return row, found


def run(items: np.ndarray, queries: np.ndarray, label: str, configs: dict[str, dict]) -> list[dict]:
    rows = []
    exact = VectorIndex({"kind": "exact"}).build(items)
    exact_row, truth = measure(exact, queries, None)
    rows.append(
        {"data": label, "index": "exact (numpy)", "build_s": 0.0, "recall@10": 1.0, **exact_row, "speedup": 1.0}
    )
    print(rows[-1])
    for name, config in configs.items():
        started = time.perf_counter()
        index = VectorIndex({k: v for k, v in config.items() if k != "ef_sweep"}).build(items)
        build = time.perf_counter() - started
        for ef in config.get("ef_sweep", [None]):  # HNSW: one build, several efSearch values
            if ef is not None:
                index._faiss_index.hnsw.efSearch = ef
            row, _ = measure(index, queries, truth)
            label_ef = name if ef is None else f"{name}, efSearch {ef}"
            rows.append(
                {"data": label, "index": label_ef, "build_s": build, **row, "speedup": row["qps"] / exact_row["qps"]}
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configs = {
        "faiss flat": {"kind": "flat"},
        "faiss IVF (nlist 4√n, nprobe 16)": {"kind": "ivf", "nprobe": 16},
        "faiss HNSW (M 32, efConstruction 100)": {
            "kind": "hnsw",
            "m": 32,
            "ef_construction": 100,
            "ef_sweep": [64, 128, 256, 512, 1024],
        },
    }
    rows: list[dict] = []
    for n in [100_000] if args.quick else [100_000, 1_000_000]:
        rows += run(
            synthetic(n, seed=0), synthetic(5_000 if n < 1_000_000 else 2_000, seed=1), f"synthetic {n:,} x 64", configs
        )
    from recforge.data.loaders import load_movielens_100k
    from recforge.models import create_model

    model = create_model("ials", n_factors=64).fit(load_movielens_100k(data_dir() / "ml-100k"))
    rows += run(
        model.item_embeddings(),
        model.user_embeddings(),
        "iALS ML-100K (1,682 items, 943 users)",
        {"faiss HNSW (M 32, efSearch 128)": {"kind": "hnsw", "m": 32, "ef_search": 128}},
    )
    markdown = [
        "# Approximate top-k",
        "",
        __doc__.split("\n\n")[1],
        "",
        markdown_table(rows, ["data", "index", "build_s", "recall@10", "qps", "speedup"]),
        "",
    ]
    write_results("ann" + ("_quick" if args.quick else ""), {"rows": rows}, "\n".join(markdown))


if __name__ == "__main__":
    main()
