"""In-batch softmax two-tower retrieval on MovieLens 100K: the TF-Recommenders tutorial's configuration
(32-d ID towers, Adagrad 0.1, batch 8,192, 3 epochs, no log-Q correction) against the same towers with
the log-Q correction recforge's retrieval task applies by default (batch 1,024, 10 epochs, weight decay
1e-4), and popularity. Two protocols: per-user 80/20 full ranking with training items excluded (NDCG@10), and the
tutorial's (random 80/20, nothing excluded, top-100 categorical accuracy). Mean over seeds.

Why this exists (issue 19): the tutorial-like configuration scored NDCG@10 0.08, below popularity (0.23).
In-batch negatives are the batch's positives, so an item appears as a negative in proportion to its
popularity; without the log-Q correction the loss pushes popular items down, and more epochs or smaller
batches make it worse, not better (seed 0, 2026-12-01: 30 epochs 0.064, batch 1,024 x 10 epochs 0.062;
with log-Q at batch 1,024 0.354, and a temperature of 0.2 did not help, 0.345). On the tutorial's
protocol popularity itself reaches top-100 accuracy 0.299, above the tutorial's reported model (~0.23).

Run: `python -m benchmarks.in_batch_softmax [--seeds 0 1 2]`; writes results/in_batch_softmax.json/.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks._common import markdown_table, write_results
from benchmarks.two_tower import IN_BATCH, TFRS_LIKE, fit
from recforge.data.loaders import load_dataset
from recforge.data.splits import per_user_split, random_split
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model

WEIGHT_DECAY_STUDY = """\
### Weight decay (chosen 2026-12-04 on validation carve-outs)

Until 2026-12-04 the configuration had no weight decay. On ml-latest-small (per-user 80/20 seed 0, the
configuration never looked at) it then scored NDCG@10 0.2627, 1.43x popularity (0.1838), and top-100
accuracy 0.138 on the tutorial's protocol, below popularity's 0.156: the 32-d ID vectors of items rated
once or twice (half of that catalogue) over-fit. Each row below trained on a validation carve-out (per-user
split seed 0, then 10% of each user's training part, seed 1; the tutorial's random split seed 0, then a
random 10% of its training part, seed 1), seed 0; NDCG@10 as a multiple of popularity / top-100 accuracy
as a multiple of popularity's:

| change to the configuration | ML-100K | ml-latest-small |
|---|---|---|
| none (10 epochs, no decay) | 1.70x / 1.07x | 1.30x / 0.88x |
| item biases | 1.73x / 1.07x | 1.29x / 0.87x |
| 20 epochs | 1.64x / 1.02x | 1.28x / 0.81x |
| 5 epochs | 1.77x / 1.15x | 1.37x / 1.02x |
| 3 epochs | 1.74x / 1.21x | 1.38x / 1.11x |
| temperature 0.5 | 1.67x / 1.03x | 1.25x / 0.83x |
| Adagrad 0.05 | 1.70x / 1.17x | 1.39x / 1.03x |
| batch 4,096 | 1.73x / 1.08x | 1.47x / 0.90x |
| weight decay 3e-5 | 1.83x / 1.16x | 1.56x / 1.02x |
| **weight decay 1e-4** | **2.01x / 1.29x** | **1.72x / 1.20x** |
| weight decay 3e-4 | 1.73x / 1.32x | 1.33x / 1.23x |
| weight decay 1e-3 | 0.94x / 0.96x | 0.94x / 0.97x |
| weight decay 1e-4, 5 epochs | 1.97x / 1.33x | 1.65x / 1.27x |

Weight decay 1e-4 at 10 epochs has the best NDCG@10 on both and is within 0.04x of the best top-100
accuracy; it is the configuration above. Test parts, not used for the choice (model seed 0): ML-100K in
the table above, and per-user split seeds 1 / 2 / 3 NDCG@10 0.4321 / 0.4272 / 0.4193 (1.98-2.00x
popularity), top-100 accuracy with random split seeds 1 / 2 / 3 0.398 / 0.386 / 0.392; ml-latest-small
split seeds 0 / 1 NDCG@10 0.3261 / 0.3346 (1.77x / 1.75x; before 0.2627 on seed 0), top-100 accuracy 0.186 /
0.185 against popularity's 0.156 / 0.155 (before 0.138).
"""  # measured once; kept with every re-render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data = load_dataset("ml-100k")
    per_user = per_user_split(data, 0.2, seed=0)
    tutorial = random_split(data, 0.2, seed=0)
    ranking = FullRankingEvaluator(per_user.train, per_user.test, ks=(10,))
    top_k = FullRankingEvaluator(tutorial.train, tutorial.test, ks=(10,), exclude_train=False)
    rows = []
    popular = create_model("most_popular")
    rows.append(
        {
            "model": "most popular",
            "ndcg@10 (per-user)": ranking.evaluate(popular.fit(per_user.train)).summary["ndcg@10"],
            "top100 accuracy (tutorial)": top_k.evaluate(popular.fit(tutorial.train)).topk_accuracy["top100_accuracy"],
            "seeds": "-",
            "fit_s": 0.0,
        }
    )
    for label, params in {
        "TFRS tutorial config (no log-Q, batch 8192, 3 epochs)": TFRS_LIKE,
        "recforge in-batch softmax (log-Q, batch 1024, 10 epochs, weight decay 1e-4)": IN_BATCH,
    }.items():
        ndcg, accuracy, seconds = [], [], []
        for seed in args.seeds:
            model, fit_s = fit("two_tower", per_user.train, seed=seed, **params)
            ndcg.append(ranking.evaluate(model).summary["ndcg@10"])
            model, _ = fit("two_tower", tutorial.train, seed=seed, **params)
            accuracy.append(top_k.evaluate(model).topk_accuracy["top100_accuracy"])
            seconds.append(fit_s)
            print(label, seed, round(ndcg[-1], 4), round(accuracy[-1], 4), flush=True)
        rows.append(
            {
                "model": label,
                "ndcg@10 (per-user)": float(np.mean(ndcg)),
                "ndcg@10 per seed": [round(v, 4) for v in ndcg],
                "top100 accuracy (tutorial)": float(np.mean(accuracy)),
                "top100 per seed": [round(v, 4) for v in accuracy],
                "seeds": len(args.seeds),
                "fit_s": float(np.mean(seconds)),
            }
        )
    best = rows[-1]
    ratio = best["ndcg@10 (per-user)"] / rows[0]["ndcg@10 (per-user)"]
    lines = [
        "# In-batch softmax two-tower retrieval (ML-100K)",
        "",
        __doc__.split("\n\n")[0],
        "",
        __doc__.split("\n\n")[1],
        "",
        f"recforge's configuration: NDCG@10 {ratio:.2f}x popularity (target >= 1.5x), top-100 accuracy "
        f"{best['top100 accuracy (tutorial)']:.3f} on the tutorial's protocol (target >= 0.30; the tutorial "
        "reports about 0.23).",
        "",
        markdown_table(
            rows,
            [
                "model",
                "ndcg@10 (per-user)",
                "ndcg@10 per seed",
                "top100 accuracy (tutorial)",
                "top100 per seed",
                "fit_s",
            ],
        ),
        "",
        WEIGHT_DECAY_STUDY,
    ]
    print("\n".join(lines))
    write_results("in_batch_softmax", {"rows": rows, "seeds": args.seeds}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
