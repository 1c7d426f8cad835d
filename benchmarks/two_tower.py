"""Two-tower models on MovieLens 100K (and the anime layout): retrieval, ratings, cold start, clusters.

Splits (recforge.data.splits, seed 0 unless stated):
- retrieval: per-user 80/20, full ranking, training items excluded; compared with popularity and the
  best classic models of benchmarks/classic_cf.py (EDLAE and the EDLAE + iALS blend);
- TF-Recommenders protocol: random 80/20 of all ratings, every rating a positive, top-k over all movies
  with nothing excluded; top-1/5/10/50/100 accuracy;
- ratings: random 80/20, RMSE next to biased MF;
- cold start: user-disjoint, 20% of users held out, the earliest half of each held-out user's ratings
  given at query time, the rest scored; per-user NDCG@10 with Wilcoxon tests (Holm-corrected) against
  popularity;
- clusters: k-means / GMM over the retrieval model's item vectors (elbow plot), speed against a full scan,
  and the clustering study's "RMSE restricted to the nearest cluster" with the id-only rating model.

Run: `python benchmarks/two_tower.py [--quick] [--sections retrieval,...]`; writes results/two_tower.json, .md
and the elbow plot (`--sections ""` re-renders the .md from the last .json without running anything).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, data_dir, markdown_table, timed, write_results
from recforge._io import write_text_atomic
from recforge.coldstart import HISTORY
from recforge.data.interactions import Interactions
from recforge.data.loaders import load_anime_kaggle, load_movielens_100k
from recforge.data.query import History
from recforge.data.splits import Split, per_user_split, random_split, user_disjoint_split
from recforge.evaluation.protocols import FullRankingEvaluator, RatingEvaluator
from recforge.evaluation.stats import holm, mean_ci, paired_test
from recforge.models import create_model
from recforge.models.base import Recommender
from recforge.models.config import TrainOptions
from recforge.retrieval.clusters import ClusterRetriever, elbow
from recforge.retrieval.topk import mask_items

warnings.filterwarnings("ignore", category=UserWarning)

WIDE = {"temperature": 1.0, "user_tower": {"output_dim": 600}, "item_tower": {"id_dim": 600, "output_dim": 600}}
TIME_DECAYED_BLEND = {  # experiments/ml100k_classic.toml's best top-10 model (docs/models.md)
    "model": "blend",
    "params": {
        "members": [
            {"model": "ease", "params": {"time_decay": 50.0, "dropout": 0.3}},
            {"model": "ials", "params": {"n_factors": 32}, "weight": 0.5},
        ]
    },
}
TFRS_LIKE = {  # the tutorial's model: 32-d ID embeddings, in-batch softmax, Adagrad 0.1, batch 8192, 3 epochs
    "batching": "pairs",
    "softmax": "in_batch",
    "history_pooling": False,
    "biases": False,
    "logq_correction": False,
    "temperature": 1.0,
    "optimizer": "adagrad",
    "lr": 0.1,
    "batch_size": 8192,
    "n_epochs": 3,
    "lr_schedule": "constant",
    "user_tower": {"id_dim": 32, "output_dim": 32, "output_activation": "none"},
    "item_tower": {"id_dim": 32, "output_dim": 32},
}
# recforge's in-batch softmax: the same 32-d ID towers, with the log-Q correction (the default of the
# retrieval task; TFRS_LIKE switches it off to copy the tutorial), 10 epochs at batch 1,024, and weight
# decay 1e-4 (chosen 2026-12-04 on validation carve-outs of ML-100K and ml-latest-small, see
# results/in_batch_softmax.md: without it the ID vectors of rarely rated items over-fit)
IN_BATCH = {**TFRS_LIKE, "logq_correction": True, "batch_size": 1024, "n_epochs": 10, "weight_decay": 1e-4}
FEATURES_ONLY = {  # no ID and no history on the user side: u.user demographics only
    "history_pooling": False,
    "user_features": True,
    "taste_features": False,
    "batching": "users",
    "user_tower": {"id_dim": 0, "hidden": (64,), "output_dim": 64, "output_activation": "none"},
    "item_tower": {"id_dim": 64, "output_dim": 64},
    "temperature": 1.0,
    "lr": 1e-3,
}


def fit(name: str, train: Interactions, seed: int = 0, **params) -> tuple[Recommender, float]:
    return timed(lambda: create_model(name, **params).fit(train, TrainOptions(seed=seed)))


class VectorScores(Recommender):
    """A cold-start strategy as a history-capable model: `scores(history) -> (n, n_items)`."""

    name = "strategy"

    def __init__(self, label: str, scores: Callable[[History], np.ndarray]) -> None:
        super().__init__()
        self.label, self.scores_fn = label, scores
        self.capabilities = frozenset({HISTORY})

    def _fit(self, train, options):
        pass

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError("a cold-start strategy only scores histories")

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self.scores_fn(history).astype(np.float32)


# ----------------------------------------------------------------------------- retrieval
def retrieval_rows(data: Interactions, seeds: list[int], quick: bool) -> list[dict]:
    split = per_user_split(data, 0.2, seed=0)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,))
    candidates = {
        "most_popular": ("most_popular", {}),
        "EDLAE (ease reg 250, dropout 0.6)": ("ease", {"reg": 250.0, "dropout": 0.6}),
        "blend (EDLAE + 0.5 iALS)": ("blend", {}),
        "two_tower retrieval preset (128-d)": ("two_tower", {}),
        "two_tower retrieval, 600-d, T=1": ("two_tower", WIDE),
        "two_tower distilled preset (600-d, T=1, taught by the blend)": ("two_tower", {"preset": "distilled"}),
        "two_tower distilled-linear preset (256-d, closed form, taught by the blend)": (
            "two_tower",
            {"preset": "distilled-linear"},
        ),
        "two_tower distilled-linear, taught by the time-decayed blend": (
            "two_tower",
            {"preset": "distilled-linear", "teacher": TIME_DECAYED_BLEND},
        ),
        "two_tower pairs + in-batch softmax (TFRS-like)": ("two_tower", TFRS_LIKE),
    }
    rows = []
    for label, (name, params) in candidates.items():
        values, fit_s = [], []
        for seed in seeds if name == "two_tower" else seeds[:1]:
            model, seconds = fit(name, split.train, seed, **params)
            values.append(evaluator.evaluate(model).summary["ndcg@10"])
            fit_s.append(seconds)
        rows.append(
            {
                "model": label,
                "ndcg@10": float(np.mean(values)),
                "ndcg@10 per seed": [round(v, 4) for v in values],
                "fit_s": float(np.median(fit_s)),
            }
        )
        print(rows[-1])
    return rows


def tfrs_rows(data: Interactions) -> list[dict]:
    split = random_split(data, 0.2, seed=0)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,), exclude_train=False)
    rows = []
    for label, params in {
        "TFRS-like (32-d IDs, in-batch softmax)": TFRS_LIKE,
        "retrieval preset (128-d)": {},
        "retrieval, 600-d, T=1": WIDE,
    }.items():
        model, seconds = fit("two_tower", split.train, **params)
        rows.append({"model": label, **evaluator.evaluate(model).topk_accuracy, "fit_s": seconds})
        print(rows[-1])
    return rows


# ----------------------------------------------------------------------------- ratings
def rating_rows(data: Interactions, split: Split | None = None) -> list[dict]:
    split = split or random_split(data, 0.2, seed=0)
    evaluator = RatingEvaluator(split.train, split.test)
    rows = []
    for label, name, params in [
        ("biased MF", "mf", {}),
        ("two_tower rating preset (ID + features)", "two_tower", {"preset": "rating"}),
        (
            "two_tower rating preset, IDs only",
            "two_tower",
            {"preset": "rating", "user_features": False, "item_features": False},
        ),
        ("two_tower anime-paper preset (features only, weighted MSE + margin)", "two_tower", {"preset": "anime-paper"}),
        ("two_tower id-only preset (ReLU(<u,i>), NAdam)", "two_tower", {"preset": "id-only"}),
    ]:
        model, seconds = fit(name, split.train, **params)
        summary = evaluator.evaluate(model).summary
        rows.append({"model": label, "rmse": summary["rmse"], "mae": summary["mae"], "fit_s": seconds})
        print(rows[-1])
    return rows


# ----------------------------------------------------------------------------- cold start and clusters
def cold_start(data: Interactions, plot_path, quick: bool) -> dict:
    split = user_disjoint_split(data, test_user_fraction=0.2, fold_in_fraction=0.5, seed=0)
    users = np.unique(split.test.user_index)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,), history=split.fold_in)
    model, _ = fit("two_tower", split.train)
    features_model, _ = fit("two_tower", split.train, **FEATURES_ONLY)
    closed_form, _ = fit("two_tower", split.train, preset="distilled-linear")
    blend, _ = fit("blend", split.train)
    popularity = split.train.item_counts().astype(np.float64)
    items = model.item_factors_
    biased_items = np.hstack([items, model.item_bias_[:, None]])

    def with_bias(vectors: np.ndarray) -> np.ndarray:
        return np.hstack([vectors, np.ones((len(vectors), 1), np.float32)]) @ biased_items.T

    user_frame = split.data.user_features.iloc[users].reset_index(drop=True)
    strategies: dict[str, Recommender] = {
        "popularity (weighted score)": create_model("weighted_popularity").fit(split.train),
        "weighted average of rated items' vectors": VectorScores(
            "wavg", lambda h: with_bias(model.weighted_average(h))
        ),
        "fold-in (implicit least squares)": VectorScores(
            "fold", lambda h: with_bias(model.implicit_fold_in(h, 1.0, 10.0)[0])
        ),
        "history through the user tower": VectorScores("tower", lambda h: model.score(np.full(len(h), -1), h)),
        "history through the distilled-linear user tower": VectorScores(
            "closed_form", lambda h: closed_form.score(np.full(len(h), -1), h)
        ),
        "history scored by the blend (EDLAE + 0.5 iALS; its teacher)": VectorScores(
            "blend", lambda h: blend.score(np.full(len(h), -1), h)
        ),
        "features-only user tower (demographics)": VectorScores(
            "features",
            lambda h: (
                np.hstack([features_model.embed_users(user_frame), np.ones((len(h), 1), np.float32)])
                @ np.hstack([features_model.item_factors_, features_model.item_bias_[:, None]]).T
            ),
        ),
    }
    timings: dict[str, float] = {}
    for method in ("kmeans", "gmm"):
        retriever = ClusterRetriever(n_clusters=20, method=method).fit(items, popularity)

        def cluster_scores(h: History, retriever=retriever, method=method) -> np.ndarray:
            vectors = model.weighted_average(h)
            started = time.perf_counter()
            top, _ = retriever.recommend(vectors, 10, h.binary.tocsr())
            timings[method] = time.perf_counter() - started
            scores = np.full((len(h), model.n_items), -np.inf, np.float32)
            rows = np.repeat(np.arange(len(h)), 10)
            ranks = np.tile(np.arange(10, 0, -1, dtype=np.float32), len(h))
            valid = top.ravel() >= 0
            scores[rows[valid], top.ravel()[valid]] = ranks[valid]
            return scores

        strategies[f"cluster retrieval ({method}, 20 clusters, popular unseen)"] = VectorScores(method, cluster_scores)
    for strategy in strategies.values():
        if isinstance(strategy, VectorScores):
            strategy.fit(split.train)  # records the training fingerprint the evaluator checks
    results = {label: evaluator.evaluate(strategy) for label, strategy in strategies.items()}
    baseline = results["popularity (weighted score)"].per_user["ndcg@10"].to_numpy()
    tests = {
        label: paired_test(r.per_user["ndcg@10"].to_numpy(), baseline)
        for label, r in results.items()
        if not label.startswith("popularity")
    }
    adjusted = dict(zip(tests, holm([t.p_value for t in tests.values()]), strict=True))
    rows = []
    for label, result in results.items():
        mean, half = mean_ci(result.per_user["ndcg@10"].to_numpy())
        row = {"strategy": label, "ndcg@10": mean, "ci95": half, "recall@10": result.summary["recall@10"]}
        if label in tests:
            row |= {"diff vs popularity": tests[label].mean_difference, "p (Wilcoxon, Holm)": float(adjusted[label])}
        rows.append(row)
        print(row)
    return {
        "rows": rows,
        "n_users": len(users),
        "cluster_recommend_s": timings,
        "clusters": cluster_speed(model, split, plot_path, quick),
    }


def cluster_speed(model, split: Split, plot_path, quick: bool) -> dict:
    """Elbow curves, full scan vs nearest-cluster scan (same vectors, rank by score), and accuracy loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = model.item_factors_.astype(np.float32)
    ks = [2, 5, 10, 20, 40, 80] if not quick else [2, 10, 40]
    curves = {"kmeans": elbow(items, ks, "kmeans"), "gmm": elbow(items, ks, "gmm")}
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, (method, values) in zip(axes, curves.items(), strict=True):
        axis.plot(list(values), list(values.values()), marker="o")
        axis.set(xlabel="clusters k", ylabel="inertia" if method == "kmeans" else "BIC", title=f"{method} elbow")
    figure.tight_layout()
    figure.savefig(plot_path, dpi=110)
    plt.close(figure)
    users = np.arange(split.train.n_users)
    vectors = model.user_factors_[users].astype(np.float32)
    exclude = split.train.to_csr("binary")
    full_s = timed(lambda: mask_items(vectors @ items.T, exclude).argpartition(-10, axis=1), repeats=5)[1]
    out = {"elbow": {m: {str(k): v for k, v in c.items()} for m, c in curves.items()}, "full_scan_s": full_s}
    for n_clusters in (10, 20, 40):
        retriever = ClusterRetriever(n_clusters=n_clusters, rank="score").fit(items, np.ones(len(items)))
        (top, _), seconds = timed(lambda r=retriever: r.recommend(vectors, 10, exclude), repeats=5)
        full_top = np.argsort(-mask_items(vectors @ items.T, exclude), axis=1)[:, :10]
        overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(top, full_top, strict=True)])
        out[f"score-ranked, {n_clusters} clusters"] = {"seconds": seconds, "recall@10 vs full scan": float(overlap)}
    return out


def restricted_rmse(data: Interactions) -> dict:
    """The clustering study's comparison: RMSE of the id-only model over all test pairs, and over the
    pairs whose item lies in the user's nearest cluster of item vectors."""
    split = random_split(data, 0.2, seed=0)
    model, _ = fit("two_tower", split.train, preset="id-only")
    users, items, truth = split.test.user_index, split.test.item_index, split.test.rating.astype(np.float64)
    predicted = np.clip(model.predict(users, items), *split.data.rating_scale)
    out = {"rmse all pairs": float(np.sqrt(np.mean((predicted - truth) ** 2)))}
    for method in ("kmeans", "gmm"):
        retriever = ClusterRetriever(n_clusters=10, method=method).fit(model.item_factors_, np.ones(model.n_items))
        inside = retriever.restricted_mask(retriever.nearest_cluster(model.user_factors_)[users], items)
        out[f"rmse nearest cluster ({method}, 10)"] = float(np.sqrt(np.mean((predicted[inside] - truth[inside]) ** 2)))
        out[f"share of test pairs in nearest cluster ({method})"] = float(inside.mean())
    print(out)
    return out


SECTIONS = ("retrieval", "tfrs_protocol", "ratings", "cold_start", "restricted_rmse", "anime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, short elbow; for a smoke run")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset to re-run; the others are kept from the last results file",
    )
    args = parser.parse_args()
    wanted = [section for section in args.sections.split(",") if section]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    folder = data_dir()
    data = load_movielens_100k(folder / "ml-100k")
    seeds = [0] if args.quick else [0, 1, 2]
    name = "two_tower" + ("_quick" if args.quick else "")
    previous = RESULTS / f"{name}.json"
    payload: dict = {}
    if not wanted and not previous.exists():
        parser.error(f"nothing to re-render: {previous} does not exist")
    if previous.exists() and set(wanted) != set(SECTIONS):
        import json

        payload = {k: v for k, v in json.loads(previous.read_text()).items() if k in SECTIONS}
    plot = RESULTS / "two_tower_elbow.png"
    RESULTS.mkdir(exist_ok=True)
    runners = {
        "retrieval": lambda: {"seeds": seeds, "rows": retrieval_rows(data, seeds, args.quick)},
        "tfrs_protocol": lambda: tfrs_rows(data),
        "ratings": lambda: rating_rows(data),
        "cold_start": lambda: cold_start(data, plot, args.quick),
        "restricted_rmse": lambda: restricted_rmse(data),
        "anime": lambda: {"ratings": rating_rows(load_anime_kaggle(folder / "anime-kaggle").explicit())},
    }
    for section in wanted:
        payload[section] = runners[section]()
    if wanted:
        write_results(name, payload, "\n".join(render(payload, plot)))
    else:  # a re-render: the numbers, their date and machine stay as the .json has them
        write_text_atomic(RESULTS / f"{name}.md", "\n".join(render(payload, plot)))


def render(payload: dict, plot: Path) -> list[str]:
    markdown = [
        "# Two-tower models",
        "",
        __doc__.split("\n\n")[1],
        "",
        "fit_s is wall time on this 2-core machine; other jobs shared it during some sections, so read "
        "those columns as upper bounds (speed targets live in the other benchmarks).",
        "",
    ]
    retrieval = payload["retrieval"]
    markdown += [
        "## ML-100K retrieval — per-user 80/20 seed 0, full ranking, training items excluded "
        f"(two-tower mean of seeds {retrieval['seeds']})",
        "",
        markdown_table(retrieval["rows"], ["model", "ndcg@10", "ndcg@10 per seed", "fit_s"]),
        "",
        "The TFRS-like row is the TF-Recommenders tutorial's configuration (no log-Q correction), kept as the "
        "reference for the defect it shows: below popularity. recforge's in-batch softmax with the log-Q "
        "correction, against the same configuration and popularity: results/in_batch_softmax.md.",
        "",
        "## ML-100K, TF-Recommenders protocol — random 80/20 seed 0, nothing excluded "
        "(the tutorial reports top-100 ≈ 0.23)",
        "",
        markdown_table(
            payload["tfrs_protocol"],
            ["model", "top1_accuracy", "top5_accuracy", "top10_accuracy", "top50_accuracy", "top100_accuracy", "fit_s"],
        ),
        "",
        "## ML-100K ratings — random 80/20 seed 0",
        "",
        markdown_table(payload["ratings"], ["model", "rmse", "mae", "fit_s"]),
        "",
        f"## ML-100K cold start — user-disjoint (20% of users = {payload['cold_start']['n_users']}, "
        "earliest 50% of their ratings given), seed 0",
        "",
        markdown_table(
            payload["cold_start"]["rows"],
            ["strategy", "ndcg@10", "ci95", "recall@10", "diff vs popularity", "p (Wilcoxon, Holm)"],
        ),
        "",
        "### Cluster retrieval speed: top-10 for every training user "
        "(score-ranked within the nearest cluster vs a full scan)",
        "",
        "```",
        _dump(payload["cold_start"]["clusters"]),
        "```",
        "",
        f"Elbow plot: `{plot.name}`",
        "",
        "## RMSE restricted to the nearest cluster (id-only preset, random 80/20 seed 0)",
        "",
        "```",
        _dump(payload["restricted_rmse"]),
        "```",
        "",
        "## Anime (Kaggle layout, 5,000-user sample) ratings — random 80/20 seed 0",
        "",
        markdown_table(payload["anime"]["ratings"], ["model", "rmse", "mae", "fit_s"]),
        "",
    ]
    return markdown


def _dump(values: dict) -> str:
    """JSON of a nested dict with its keys in one order whether it was just measured or read back from the
    results file (which sorts keys as text): numbers by value first, then text."""
    import json

    def ordered(value):
        if not isinstance(value, dict):
            return value
        numeric = sorted((k for k in value if str(k).isdigit()), key=int)
        text = sorted(k for k in value if not str(k).isdigit())
        return {k: ordered(value[k]) for k in numeric + text}

    return json.dumps(ordered(values), indent=1, default=float)


if __name__ == "__main__":
    main()
