"""Time to quality (issue 19, point 5): three trainings against their targets and peers, in one run.

1. SASRec on Amazon Beauty: NDCG@10 >= 0.045 within 5 minutes. Beauty.txt (the S3-Rec/ICLRec file),
   leave-one-out (last item test, second-to-last validation, which this run does not use), full ranking over
   12,101 items with the history excluded. The configuration trains for a fixed budget instead of until
   validation stops improving: full-softmax cross-entropy, dropout 0.5, batches of 256, Adam for 13 epochs,
   no validation passes (first at a constant 3e-3, three times the default; now see below). Measured first
   (seed 0, 2026-12-02): what the 22-minute run spent beyond training was validation every second epoch and
   the epochs after the quality had plateaued; 15 epochs at 3e-3 reached NDCG@10 0.0463 in 316 s, the same
   as the 46-epoch, 1,312 s early-stopped run of sequential.md (0.0461). Since 2026-12-02 the item vectors
   add the mean of the item's brand/category attribute embeddings (`item_features = "attributes"`, from
   Beauty_item2attributes.json, which ships with the file), chosen on the validation item (trained without
   it, seed 0, 13 epochs): NDCG@10 0.0568 without, 0.0610 with (0.0587 on the input side only); at 20 epochs
   0.0592, 10 epochs 0.0599, dropout 0.4 / 0.6 0.0598 / 0.0605. Then the learning rate decayed to zero over
   the 13 epochs (`lr_schedule = "cosine"`, same validation): from 3e-3 0.0588, 5e-3 0.0624, 8e-3 0.0628,
   5e-3 over 16 epochs 0.0621, linear from 3e-3 over 16 epochs 0.0610; 5e-3 is used (8e-3 is within one
   seed's spread of it, and the lower rate is the safer one on files this was not tuned on). Test numbers of
   the constant 3e-3 recipe with attributes (seeds 0-2): NDCG@10 0.0496 / 0.0509 / 0.0494, @20 0.0578 mean;
   without attributes 0.0457 (0.0454 / 0.0460 / 0.0456) in 142-157 s. No peer library is run for this row
   (RecBole is not among the benchmark dependencies); the reference is ICLRec's published NDCG@10 on the
   same file and protocol, 0.0403, which uses no attributes (S3-Rec pre-trains with them).
2. Bayesian MF on ML-100K u1.base/u1.test at its quality in <= 2x the fit time of Surprise's SVD tuned on
   a validation carve-out (random 10% of u1.base, seed 1, the grid of classic_cf.py). Median of
   alternating fits after a warm-up of each.
3. iALS at 20M interactions (the synthetic MovieLens-20M-shaped file of large_scale.py, >= 5 events per
   user and item, per-user 80/20 split seed 0) no slower than implicit's ALS at equal settings: 64
   factors, 15 iterations, 3 conjugate-gradient steps, regularization 20, alpha 2, binary confidence.
   Median of alternating fits after a warm-up of each; NDCG@10 of the first fit of each on the test part.

4. The same SASRec recipe trained on every interaction but the test one (`leave_last_out(valid_k=0)`):
   the recipe makes no choice on validation data, so the second-to-last item can be training data like
   any other, as a final refit would use it. The test items and the full-ranking evaluation are those of
   part 1. The published protocol (the S3-Rec/ICLRec code) trains without the validation item, so this
   row is not comparable to published numbers; it is reported against issue 19's sequential line.

5. The part-1 recipe blended (per-user z-scores, `blend`) with EASE scored from recency-weighted histories:
   `ease` with `time_decay` 8 (the Gram matrix counts items d positions apart in a sequence with weight
   exp(-d/8)), the brand/category attributes as pseudo-users (`item_features = "attributes"`,
   `feature_weight` 3: the Gram matrix gains 3 per value two items share), `history_decay` 3 (a history
   row weighs the item i steps before the latest exp(-i/3)) and reg 50, at weight 0.2 beside SASRec's 1.
   Chosen on the validation item (trained without it, SASRec seed 0, whose own NDCG@10 / @20 there is
   0.0624 / 0.0718); see docs/models.md for the grid. Published protocol.

fit_s is the wall time of `fit` on this 2-core machine (set-up included).

Run: `python -m benchmarks.time_to_quality [--parts sasrec,sasrec_with_validation_item,sasrec_ease_blend,rating,ials]
[--seeds 0,1,2] [--repeats 3]`; writes results/time_to_quality.json and .md. A run of some parts keeps the
other parts' previous results; `--parts ""` only re-renders the Markdown.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from benchmarks._common import RESULTS, data_dir, markdown_table, write_results
from recforge.models import create_model
from recforge.models.config import TrainOptions

warnings.filterwarnings("ignore", category=UserWarning)

TARGET_NDCG, BUDGET_S = 0.045, 300.0
SEQUENTIAL_TARGET = (0.050, 0.066)  # NDCG@10, NDCG@20
SEQUENTIAL_EASE = {
    "time_decay": 8.0,
    "history_decay": 3.0,
    "reg": 50.0,
    "dropout": 0.0,
    "item_features": "attributes",
    "feature_weight": 3.0,
}
BLEND_WEIGHT = 0.2
FAST_SASREC = {
    "min_steps": 1100,
    "dropout": 0.5,
    "batch_size": 256,
    "lr": 5e-3,
    "lr_schedule": "cosine",
    "item_features": "attributes",
}
ICLREC_NDCG10 = 0.0403
IALS_SETTINGS = {"n_factors": 64, "n_iterations": 15, "reg": 20.0, "alpha": 2.0, "cg_steps": 3}


def sequential_model(epochs: int, blend: bool) -> dict:
    """The SASRec recipe, or (`blend`) the recipe blended with EASE on the time-decayed Gram matrix scored
    from recency-weighted histories (SEQUENTIAL_EASE, weight BLEND_WEIGHT; chosen on the validation item)."""
    sasrec = {"model": "sasrec", "params": {"n_epochs": epochs, **FAST_SASREC}}
    if not blend:
        return sasrec
    ease = {"model": "ease", "params": SEQUENTIAL_EASE, "weight": BLEND_WEIGHT}
    return {"model": "blend", "params": {"members": [sasrec, ease]}}


def sasrec_part(seeds: list[int], epochs: int, with_validation_item: bool = False, blend: bool = False) -> dict:
    """`with_validation_item`: train on every interaction but the test one (`leave_last_out(valid_k=0)`); the
    recipe makes no choice on validation data, so the second-to-last item is training data like any other.
    The published protocol (S3-Rec/ICLRec code) trains without it; both are reported, labelled."""
    from recforge.data.loaders import load_amazon_sequences
    from recforge.data.splits import leave_last_out
    from recforge.evaluation.protocols import next_item_evaluator

    data = load_amazon_sequences(data_dir() / "amazon-beauty")
    split = leave_last_out(data, k=1, valid_k=0 if with_validation_item else 1)
    label = (
        f"sasrec + attributes, {epochs} epochs, lr 5e-3 cosine"
        + (" + sequential EASE" if blend else "")
        + (", trained with the validation item" if with_validation_item else "")
    )
    evaluator = next_item_evaluator(split, ks=(10, 20))
    popular = evaluator.evaluate(create_model("most_popular").fit(split.train)).summary
    rows = [
        {
            "model": "most_popular",
            "seed": "",
            "fit_s": 0.0,
            "ndcg@10": popular["ndcg@10"],
            "ndcg@20": popular["ndcg@20"],
        }
    ]
    for seed in seeds:
        started = time.perf_counter()
        spec = sequential_model(epochs, blend)
        model = create_model(spec["model"], **spec["params"]).fit(split.train, TrainOptions(seed=seed))
        seconds = time.perf_counter() - started
        summary = evaluator.evaluate(model).summary
        rows.append(
            {
                "model": label,
                "seed": seed,
                "fit_s": seconds,
                "ndcg@10": summary["ndcg@10"],
                "ndcg@20": summary["ndcg@20"],
                "reached": bool(summary["ndcg@10"] >= TARGET_NDCG and seconds <= BUDGET_S),
            }
        )
        print(rows[-1], flush=True)
    runs = rows[1:]
    fit_s, ndcg = max(r["fit_s"] for r in runs), float(np.mean([r["ndcg@10"] for r in runs]))
    ndcg20 = float(np.mean([r["ndcg@20"] for r in runs]))
    return {
        "rows": rows,
        "epochs": epochs,
        "config": sequential_model(epochs, blend),
        "sequential_line_met": bool(ndcg >= SEQUENTIAL_TARGET[0] and ndcg20 >= SEQUENTIAL_TARGET[1]),
        "mean": {"ndcg@10": ndcg, "ndcg@20": ndcg20},
        "side_by_side": {
            "task": ("SASRec + sequential EASE" if blend else "SASRec")
            + ", Amazon Beauty LOO"
            + (" (validation item in training)" if with_validation_item else ""),
            "recforge": f"sasrec + attributes{' + sequential EASE' if blend else ''}, {epochs} epochs "
            f"(seeds {','.join(map(str, seeds))})",
            "recforge_fit_s": fit_s,
            "recforge_quality": f"NDCG@10 {ndcg:.4f}, @20 {ndcg20:.4f}",
            "peer": "ICLRec (published)",
            "peer_fit_s": "",
            "peer_quality": f"NDCG@10 {ICLREC_NDCG10}",
            "target": (
                f"mean NDCG@10 >= {SEQUENTIAL_TARGET[0]} and @20 >= {SEQUENTIAL_TARGET[1]} (issue 19's sequential line)"
                if with_validation_item
                else f"NDCG@10 >= {TARGET_NDCG} in <= {BUDGET_S:.0f} s, every seed"
            ),
            "met": (
                ndcg >= SEQUENTIAL_TARGET[0] and ndcg20 >= SEQUENTIAL_TARGET[1]
                if with_validation_item
                else all(r["reached"] for r in runs)
            ),
        },
    }


def rating_part(repeats: int) -> dict:
    from surprise import SVD

    from benchmarks.classic_cf import interleaved, surprise_data, surprise_grid, surprise_predictor
    from recforge.data.loaders import load_movielens_100k_fold
    from recforge.evaluation.protocols import RatingEvaluator

    split = load_movielens_100k_fold("u1", data_dir() / "ml-100k")
    best, _ = surprise_grid(split, 0, quick=False)
    trainset = surprise_data(split)
    evaluator = RatingEvaluator(split.train, split.test)
    ours = create_model("bayesian_mf").fit(split.train, TrainOptions(seed=0))
    theirs = SVD(random_state=0, **best)
    theirs.fit(trainset)
    ours_rmse = evaluator.evaluate(ours).summary["rmse"]
    theirs_rmse = evaluator.evaluate(surprise_predictor(theirs, split)).summary["rmse"]
    ours_s, theirs_s = interleaved(
        lambda train: create_model("bayesian_mf").fit(train, TrainOptions(seed=0)),
        lambda: SVD(random_state=0, **best).fit(trainset),
        split,
        repeats,
    )
    print({"bayesian_mf_s": ours_s, "svd_s": theirs_s, "rmse": ours_rmse, "svd_rmse": theirs_rmse}, flush=True)
    return {
        "surprise_svd_tuned": best,
        "repeats": repeats,
        "side_by_side": {
            "task": "ratings, ML-100K u1",
            "recforge": "bayesian_mf (defaults)",
            "recforge_fit_s": ours_s,
            "recforge_quality": f"RMSE {ours_rmse:.4f}",
            "peer": f"Surprise SVD (tuned {best})",
            "peer_fit_s": theirs_s,
            "peer_quality": f"RMSE {theirs_rmse:.4f}",
            "target": "fit <= 2x the peer's, RMSE no worse",
            "met": bool(ours_s <= 2 * theirs_s and ours_rmse <= theirs_rmse),
        },
    }


def ials_part(repeats: int) -> dict:
    import implicit
    from threadpoolctl import threadpool_limits

    from benchmarks.classic_cf import implicit_scores, interleaved
    from benchmarks.large_scale import _load_and_prepare
    from recforge.evaluation.protocols import FullRankingEvaluator

    split = _load_and_prepare("20M", {})
    matrix = split.train.to_csr("binary").astype(np.float32)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,))
    fitted = {}

    def ours(train):
        fitted.setdefault("ours", create_model("ials", **IALS_SETTINGS).fit(train, TrainOptions(seed=0)))

    def theirs():
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=64, iterations=15, regularization=20.0, alpha=2.0, use_cg=True, random_state=0
        )
        with threadpool_limits(1, "blas"):  # implicit's own advice: its OpenMP loop, single-threaded BLAS
            model.fit(matrix, show_progress=False)
        fitted.setdefault("theirs", model)

    ours_s, theirs_s = interleaved(ours, theirs, split, repeats)
    print({"ials_s": ours_s, "implicit_s": theirs_s}, flush=True)
    ours_ndcg = evaluator.evaluate(fitted["ours"]).summary["ndcg@10"]
    theirs_ndcg = evaluator.evaluate(implicit_scores(fitted["theirs"]).fit(split.train)).summary["ndcg@10"]
    return {
        "train_rows": len(split.train_rows),
        "repeats": repeats,
        "side_by_side": {
            "task": "implicit feedback, 20M synthetic",
            "recforge": "ials (64 factors, 15 iterations, CG 3)",
            "recforge_fit_s": ours_s,
            "recforge_quality": f"NDCG@10 {ours_ndcg:.4f}",
            "peer": "implicit ALS (same settings)",
            "peer_fit_s": theirs_s,
            "peer_quality": f"NDCG@10 {theirs_ndcg:.4f}",
            "target": "fit <= the peer's, NDCG@10 within 0.005",
            "met": bool(ours_s <= theirs_s and abs(ours_ndcg - theirs_ndcg) <= 0.005),
        },
    }


PARTS = {  # name -> the part, given the command-line arguments
    "sasrec": lambda args: sasrec_part(_seeds(args), args.epochs),
    "sasrec_with_validation_item": lambda args: sasrec_part(_seeds(args), args.epochs, with_validation_item=True),
    "sasrec_ease_blend": lambda args: sasrec_part(_seeds(args), args.epochs, blend=True),
    "rating": lambda args: rating_part(args.repeats),
    "ials": lambda args: ials_part(args.repeats),
}


def _seeds(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.seeds.split(",")]


COLUMNS = [
    "task",
    "recforge",
    "recforge_fit_s",
    "recforge_quality",
    "peer",
    "peer_fit_s",
    "peer_quality",
    "target",
    "met",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="sasrec,sasrec_with_validation_item,sasrec_ease_blend,rating,ials")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    previous = RESULTS / "time_to_quality.json"
    parts = json.loads(previous.read_text()).get("parts", {}) if previous.exists() else {}
    for name in filter(None, args.parts.split(",")):
        started = time.strftime("%Y-%m-%d %H:%M")
        if name not in PARTS:
            raise SystemExit(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
        parts[name] = PARTS[name](args)
        parts[name]["measured"] = started
    table = [parts[name]["side_by_side"] for name in PARTS if name in parts]
    measured = ", ".join(f"{name} {parts[name]['measured']}" for name in PARTS if name in parts)
    markdown = [
        "# Time to quality",
        "",
        __doc__.split("\n\n", 1)[1].rsplit("\n\nRun:", 1)[0],
        "",
        f"Measured (UTC): {measured}.",
        "",
        markdown_table(table, COLUMNS),
        "",
    ]
    for name, part in (("sasrec", "part 1"), ("sasrec_ease_blend", "part 5")):
        if name in parts and "mean" in parts[name]:
            mean, met = parts[name]["mean"], parts[name]["sequential_line_met"]
            markdown += [
                f"Issue 19's sequential line (mean NDCG@10 >= {SEQUENTIAL_TARGET[0]} and @20 >= "
                f"{SEQUENTIAL_TARGET[1]}) under the published protocol ({part}): NDCG@10 {mean['ndcg@10']:.5f}, "
                f"@20 {mean['ndcg@20']:.5f} — " + ("met." if met else "not met."),
                "",
            ]
    for name in ("sasrec", "sasrec_with_validation_item", "sasrec_ease_blend"):
        if name in parts:
            markdown += [
                f"## {parts[name]['side_by_side']['task']}, per seed",
                "",
                markdown_table(parts[name]["rows"], ["model", "seed", "fit_s", "ndcg@10", "ndcg@20", "reached"]),
                "",
            ]
    write_results("time_to_quality", {"parts": parts}, "\n".join(markdown))


if __name__ == "__main__":
    main()
