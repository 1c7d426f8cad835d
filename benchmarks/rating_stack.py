"""Rating prediction by stacking (issue 19): recforge's `stack` against its own members on ML-100K.

`stack` holds out 10% of the training ratings at random, fits its eleven members on the rest (Bayesian
SVD++ flipped: Bayesian MF whose user and item priors learn from which items each user rated and which
users rated each item; item- and user-KNNBaseline, biased SGD MF, explicit ALS, the two-tower rating
preset, biases, two I-AutoRec and two U-AutoRec), fits a feature-weighted linear blend (Sill et al.
2009: each member's weight linear in the user's and the item's log rating counts) to the held-out
ratings by ridge regression (penalty by 5-fold cross-validation on them), then refits the members on
all the training ratings. No test rating is used for any choice.

Splits: random 80/20 (seed 0) and ML-100K's shipped u1.base/u1.test. The stack is fitted with model
seeds 0, 1, 2 (its carve-out and every member's initialisation follow the seed); members alone with
seed 0 on the whole training part, and plain Bayesian MF (not a member) for reference. Per-user
significance: a paired t-test of each user's mean squared error, stack (seed 0) against its best
member, over the test users. Peers on the same splits are in classic_cf.md (Surprise SVD tuned: 0.9062
random 80/20, 0.9241 u1); published u1 references: GLocal-K 0.8889, Sparse FC ~0.895, GC-MC ~0.905.

Run: `python -m benchmarks.rating_stack [--seeds 0,1,2]`; writes results/rating_stack.json and .md.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from benchmarks._common import markdown_table, timed, write_results
from recforge.data.loaders import load_movielens_100k, load_movielens_100k_fold
from recforge.data.splits import Split, random_split
from recforge.evaluation.stats import paired_test
from recforge.models import create_model
from recforge.models.config import TrainOptions
from recforge.models.ensemble import StackConfig
from recforge.models.registry import ModelSpec

warnings.filterwarnings("ignore", category=UserWarning)


def per_user_mse(split: Split, predictions: np.ndarray) -> np.ndarray:
    test = split.test
    errors = (predictions.astype(np.float64) - test.rating) ** 2
    sums = np.bincount(test.user_index, weights=errors, minlength=test.n_users)
    counts = np.bincount(test.user_index, minlength=test.n_users)
    return sums[counts > 0] / counts[counts > 0]


def rmse(split: Split, predictions: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predictions.astype(np.float64) - split.test.rating) ** 2)))


def split_rows(name: str, split: Split, seeds: list[int]) -> list[dict]:
    test = split.test
    rows, member_errors = [], {}
    plain = ModelSpec(model="bayesian_mf", params={"n_iterations": 400, "burn_in": 50, "n_kept": 100})
    model, seconds = timed(lambda: plain.build().fit(split.train, TrainOptions(seed=0)))
    value = rmse(split, model.predict(test.user_index, test.item_index))
    rows.append({"split": name, "model": f"reference: {plain.model} {plain.params}", "rmse": value, "fit_s": seconds})
    print(rows[-1], flush=True)
    for spec in StackConfig().members:
        label = f"{spec.model} {spec.params}" if spec.params else spec.model
        model, seconds = timed(lambda spec=spec: spec.build().fit(split.train, TrainOptions(seed=0)))
        predictions = model.predict(test.user_index, test.item_index)
        member_errors[label] = (rmse(split, predictions), per_user_mse(split, predictions))
        rows.append({"split": name, "model": f"member: {label}", "rmse": member_errors[label][0], "fit_s": seconds})
        print(rows[-1], flush=True)
    values, fit_s, stack_errors, logs = [], [], None, []
    for seed in seeds:
        model, seconds = timed(lambda seed=seed: create_model("stack").fit(split.train, TrainOptions(seed=seed)))
        predictions = model.predict(test.user_index, test.item_index)
        values.append(rmse(split, predictions))
        fit_s.append(seconds)
        logs.append(model.training_log_[0])
        if stack_errors is None:
            stack_errors = per_user_mse(split, predictions)
        print(name, seed, values[-1], logs[-1], flush=True)
    best = min(member_errors, key=lambda label: member_errors[label][0])
    test_result = paired_test(stack_errors, member_errors[best][1], method="t")
    rows.append(
        {
            "split": name,
            "model": "stack (defaults)",
            "rmse": float(np.mean(values)),
            "rmse std": float(np.std(values)),
            "rmse per seed": [round(v, 4) for v in values],
            "fit_s": float(np.median(fit_s)),
            "ridge per seed": [log["ridge"] for log in logs],
            "vs best member": f"{best}: mean per-user MSE diff {test_result.mean_difference:+.4f}, "
            f"paired t p = {test_result.p_value:.2g} ({test_result.n} users)",
        }
    )
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = split_rows("random 80/20 seed 0", random_split(load_movielens_100k(), 0.2, seed=0), seeds)
    rows += split_rows("u1.base/u1.test", load_movielens_100k_fold("u1"), seeds)
    columns = ["split", "model", "rmse", "rmse std", "rmse per seed", "fit_s", "ridge per seed", "vs best member"]
    markdown = "\n".join(
        [
            "# Rating prediction: stacked blend (ML-100K)",
            "",
            __doc__.split("\n\n", 1)[1].rsplit("\n\nRun:", 1)[0],
            "",
            markdown_table(rows, columns),
            "",
        ]
    )
    write_results("rating_stack", {"rows": rows, "seeds": seeds}, markdown)


if __name__ == "__main__":
    main()
