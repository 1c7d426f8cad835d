"""Top-10 configurations on splits they were not chosen on: other seeds of the per-user split, another file.

Every recforge configuration below was chosen on the validation carve-out of ML-100K's per-user 80/20 split
with seed 0 (classic_cf.py, docs/models.md) and is held fixed here. It is evaluated on the same protocol
(per-user 80/20, full ranking, training items excluded) with split seeds 1-4 of ML-100K and seeds 0-2 of
ml-latest-small, which no choice looked at. The reference is EASE tuned afresh on each split's own
validation carve-out (per-user 10% of the training part, seed 1; classic_cf.py's grid), so each split's
reference is as strong as tuning makes it; implicit's ALS keeps its seed-0 tuned setting. Per split: each
model's NDCG@10, and the per-user Wilcoxon signed-rank test against the tuned EASE (Holm within the split).
The dense SLIM rows run where the catalogue has at most 4,000 items (ML-100K), as in classic_cf.py; the
rows with `neighbours` 200 (each item's weights over its 200 nearest by decayed co-occurrence) run on both.
The rows "weights validated at fit" let the blend choose its members' weights on a per-user 10% carve-out
of each split's own training part (`validate_weights`), instead of keeping the seed-0 choice.

Run: `python benchmarks/split_seeds.py [--quick]`; writes results/split_seeds.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from benchmarks._common import data_dir, markdown_table, write_results
from benchmarks.classic_cf import (
    EASE_GRID,
    SLIM_MAX_ITEMS,
    TIME_DECAYED_BLEND,
    TIME_DECAYED_BLEND_WITH_SLIM,
    TIME_DECAYED_EDLAE,
    TIME_DECAYED_SLIM,
    implicit_als,
    significance,
    tune,
)
from recforge.data.loaders import load_movielens_100k, load_movielens_latest_small
from recforge.data.splits import Split, per_user_split
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions

warnings.filterwarnings("ignore", category=RuntimeWarning, module="implicit")

SEED_0_IALS = {"n_factors": 32, "reg": 50.0, "alpha": 5.0}  # classic_cf.md, tuned on seed 0's carve-out
# time-decayed SLIM over each item's 200 nearest (fsSLIM): no n_items² matrix, so it runs on every file
NEIGHBOURHOOD_SLIM = {**TIME_DECAYED_SLIM, "neighbours": 200}
THREE_MEMBERS_NEIGHBOURHOODS = [*TIME_DECAYED_BLEND, {"model": "slim", "params": NEIGHBOURHOOD_SLIM, "weight": 0.5}]
SEED_0_IMPLICIT_ALS = {"n_factors": 128, "reg": 50.0, "alpha": 10.0}
SEED_0_EASE = {"reg": 250.0, "dropout": 0.6}
REFERENCE = "ease (tuned on this split)"
THREE_MEMBERS = "blend (time-decayed EDLAE + 0.5·iALS + 0.5·time-decayed SLIM)"


def candidates(split: Split, tuned_ease: dict) -> list[tuple[str, object]]:
    train = split.train
    rows = [
        ("most_popular", lambda: create_model("most_popular").fit(train)),
        (REFERENCE, lambda: create_model("ease", **tuned_ease).fit(train)),
        ("ease (seed-0 setting: reg 250, dropout 0.6)", lambda: create_model("ease", **SEED_0_EASE).fit(train)),
        ("ials (seed-0 setting: 32 factors, reg 50, alpha 5)", lambda: create_model("ials", **SEED_0_IALS).fit(train)),
        ("implicit ALS (seed-0 setting: 128, reg 50, alpha 10)", lambda: implicit_als(train, SEED_0_IMPLICIT_ALS)),
        ("blend (defaults: EDLAE + 0.5·iALS)", lambda: create_model("blend").fit(train, TrainOptions(seed=0))),
        ("ease (time_decay 50, dropout 0.3)", lambda: create_model("ease", **TIME_DECAYED_EDLAE).fit(train)),
        (
            "blend (time-decayed EDLAE + 0.5·iALS)",
            lambda: create_model("blend", members=TIME_DECAYED_BLEND).fit(train, TrainOptions(seed=0)),
        ),
        (
            "blend (defaults, weights validated at fit)",
            lambda: create_model("blend", validate_weights=True).fit(train, TrainOptions(seed=0)),
        ),
        (
            "blend (time-decayed EDLAE + iALS, weights validated at fit)",
            lambda: create_model("blend", members=TIME_DECAYED_BLEND, validate_weights=True).fit(
                train, TrainOptions(seed=0)
            ),
        ),
        ("slim (time_decay 50, reg 30, dropout 0.5, neighbours 200)", lambda: fit_slim(train, NEIGHBOURHOOD_SLIM)),
        (
            "blend (time-decayed EDLAE + 0.5·iALS + 0.5·time-decayed SLIM, neighbours 200)",
            lambda: create_model("blend", members=THREE_MEMBERS_NEIGHBOURHOODS).fit(train, TrainOptions(seed=0)),
        ),
        (
            "blend (the same with neighbours 200, weights validated at fit)",
            lambda: create_model("blend", members=THREE_MEMBERS_NEIGHBOURHOODS, validate_weights=True).fit(
                train, TrainOptions(seed=0)
            ),
        ),
    ]
    if train.n_items <= SLIM_MAX_ITEMS:
        rows += [
            (
                THREE_MEMBERS,
                lambda: create_model("blend", members=TIME_DECAYED_BLEND_WITH_SLIM).fit(train, TrainOptions(seed=0)),
            ),
            (
                "blend (three members, weights validated at fit)",
                lambda: create_model("blend", members=TIME_DECAYED_BLEND_WITH_SLIM, validate_weights=True).fit(
                    train, TrainOptions(seed=0)
                ),
            ),
        ]
    return rows


def fit_slim(train, params: dict):
    return create_model("slim", **params).fit(train)


def split_rows(split: Split, quick: bool) -> tuple[list[dict], dict]:
    grid = EASE_GRID if not quick else {"reg": [250.0, 500.0], "dropout": [0.3, 0.6]}
    tuned_ease = tune(split, lambda t, p: create_model("ease", **p).fit(t), grid)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,), check_fit=False)
    rows, per_user = [], {}
    for label, fit in candidates(split, tuned_ease):
        result = evaluator.evaluate(fit())
        per_user[label] = result.per_user["ndcg@10"]
        rows.append({"model": label, "ndcg@10": result.summary["ndcg@10"], "recall@10": result.summary["recall@10"]})
        print(f"  {label}: {rows[-1]['ndcg@10']:.4f}", flush=True)
    significance(rows, per_user, REFERENCE, "wilcoxon")
    return rows, tuned_ease


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="ML-100K seeds 1-2 only, a small EASE grid")
    args = parser.parse_args()
    folder = data_dir()
    datasets = {"ml-100k": (load_movielens_100k(folder / "ml-100k"), [1, 2] if args.quick else [1, 2, 3, 4])}
    if not args.quick:
        datasets["ml-latest-small"] = (load_movielens_latest_small(folder / "ml-latest-small"), [0, 1, 2])
    payload: dict = {"datasets": {}}
    markdown = ["# Top-10 configurations on splits they were not chosen on", "", __doc__.split("\n\n")[1], ""]
    for name, (data, seeds) in datasets.items():
        by_seed = {}
        for seed in seeds:
            print(f"{name} per-user 80/20 seed {seed}", flush=True)
            rows, tuned_ease = split_rows(per_user_split(data, 0.2, seed=seed), args.quick)
            by_seed[seed] = {"rows": rows, "tuned_ease": tuned_ease}
            markdown += [
                f"## {name}, per-user 80/20 seed {seed} (EASE tuned here: {tuned_ease})",
                "",
                markdown_table(rows, ["model", "ndcg@10", "recall@10", "diff vs reference", "p (Wilcoxon, Holm)"]),
                "",
            ]
        summary = summary_rows(by_seed)
        payload["datasets"][name] = {"seeds": by_seed, "summary": summary}
        seed_columns = [f"seed {seed}" for seed in seeds]
        markdown += [
            f"## {name}: NDCG@10 over seeds {', '.join(map(str, seeds))}",
            "",
            markdown_table(summary, ["model", *seed_columns, "mean", "beats the tuned EASE (p < 0.05)"]),
            "",
        ]
        print(markdown[-2], flush=True)
    write_results("split_seeds" + ("_quick" if args.quick else ""), payload, "\n".join(markdown))


def summary_rows(by_seed: dict) -> list[dict]:
    """One row per model: NDCG@10 per seed, the mean, and on how many seeds it beats the tuned EASE."""
    labels = [row["model"] for row in next(iter(by_seed.values()))["rows"]]
    summary = []
    for label in labels:
        row: dict = {"model": label}
        values, wins = [], 0
        for seed, result in by_seed.items():
            found = next(r for r in result["rows"] if r["model"] == label)
            row[f"seed {seed}"] = found["ndcg@10"]
            values.append(found["ndcg@10"])
            p = found.get("p (Wilcoxon, Holm)")
            wins += p is not None and p < 0.05 and found["diff vs reference"] > 0
        row["mean"] = statistics.fmean(values)
        row["beats the tuned EASE (p < 0.05)"] = "" if label == REFERENCE else f"{wins} of {len(by_seed)}"
        summary.append(row)
    return sorted(summary, key=lambda r: -r["mean"])


if __name__ == "__main__":
    main()
