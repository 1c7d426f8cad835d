"""Sequential recommenders, leave-one-out with full ranking (the user's history excluded).

- Amazon Beauty (`Beauty.txt`, the S3-Rec/ICLRec file): SASRec with full-softmax cross-entropy, mean of
  the given seeds, HR/NDCG@5/10/20, against popularity; published full-ranking results on this file put
  plain SASRec near NDCG@10 0.03 and ICLRec near 0.040.
- Training time of one SASRec epoch on Beauty on this machine (target: under 60 s).
- MovieLens 100K: `experiments/ml100k_sequential.toml` through `recforge compare` (item-KNN, EASE,
  SASRec, GRU4Rec, Model I, Model II, the order-aware EASE and its blend with SASRec), report in
  reports/ml100k-sequential/.

Run: `python benchmarks/sequential.py [--seeds 0 1 2] [--epochs 80] [--skip-compare] [--keep-beauty]`;
writes results/sequential.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from benchmarks._common import RESULTS, data_dir, markdown_table, write_results
from recforge.data.loaders import load_amazon_sequences
from recforge.data.splits import leave_last_out
from recforge.evaluation.protocols import next_item_evaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions

BEAUTY_SASREC = {"dropout": 0.5, "batch_size": 256, "eval_every": 2, "early_stopping_patience": 4}
SASREC_SEEDS = """\
### SASRec on ML-100K across seeds (key-padding mask, 2026-12-01)

Seed 0 above moved from 0.0907 to 0.0707 after SASRec started masking padded keys (scores no longer
depend on the batch; issue 20). One seed is not enough to call that a regression, so SASRec alone was
run through `recforge compare` (leave-last-out, `n_epochs = 40`) for seeds 0-2 with the code before the
mask (24e1a42), with the mask (today's code), and with the mask plus a learned attention-sink key (a
batch-independent stand-in for the padding the old model could attend to):

| encoder | seed 0 | seed 1 | seed 2 | mean | std |
|---|---|---|---|---|---|
| no key-padding mask (before) | 0.0907 | 0.0771 | 0.0882 | 0.0853 | 0.0072 |
| key-padding mask (now) | 0.0707 | 0.0839 | 0.0906 | 0.0817 | 0.0101 |
| mask + learned sink key | 0.0796 | 0.0831 | 0.0836 | 0.0821 | 0.0022 |

The difference of the means (−0.0036) is well inside one seed's spread, and the sink did not change
the mean either, so it was not kept: the masked encoder is the honest one (a metric that does not move
with the batch size) at the same quality. The seed-0 table above is one draw from this spread.
"""  # measured once (the seeds study of issue 20); kept with every re-render

METRICS = ["hit_rate@5", "ndcg@5", "hit_rate@10", "ndcg@10", "hit_rate@20", "ndcg@20", "hit_rate@1"]


def beauty(seeds: list[int], epochs: int) -> dict:
    data = load_amazon_sequences(data_dir() / "amazon-beauty")
    split = leave_last_out(data, k=1, valid_k=1)
    evaluator = next_item_evaluator(split, ks=(5, 10, 20))
    rows = [
        {
            "model": "most_popular",
            **{m: evaluator.evaluate(create_model("most_popular").fit(split.train)).summary[m] for m in METRICS},
        }
    ]
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        model = create_model("sasrec", n_epochs=epochs, **BEAUTY_SASREC).fit(
            split.train, TrainOptions(seed=seed, valid=split.valid)
        )
        seconds = time.perf_counter() - started
        summary = evaluator.evaluate(model).summary
        runs.append(
            {"seed": seed, "epochs": len(model.training_log_), "fit_s": seconds, **{m: summary[m] for m in METRICS}}
        )
        print(runs[-1], flush=True)
    rows.append(
        {"model": f"sasrec (mean of seeds {seeds})", **{m: float(np.mean([r[m] for r in runs])) for m in METRICS}}
    )
    return {"rows": rows, "runs": runs, "config": BEAUTY_SASREC}


def epoch_time() -> dict:
    data = load_amazon_sequences(data_dir() / "amazon-beauty")
    split = leave_last_out(data, k=1, valid_k=1)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        create_model("sasrec", n_epochs=1, **BEAUTY_SASREC).fit(split.train, TrainOptions(seed=0))
        times.append(time.perf_counter() - started)
    return {"sasrec_beauty_epoch_s": min(times), "all_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument(
        "--keep-beauty", action="store_true", help="keep the Beauty sections of the last results file (22 min)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # per-epoch validation lines
    if args.keep_beauty:
        last = json.loads((RESULTS / "sequential.json").read_text())
        payload = {key: last[key] for key in ("epoch_time", "beauty")}
    else:
        payload = {"epoch_time": epoch_time()}
        print(payload["epoch_time"], flush=True)
        payload["beauty"] = beauty(args.seeds, args.epochs)
    markdown = [
        "# Sequential recommenders",
        "",
        __doc__.split("\n\n")[1],
        "",
        f"One SASRec epoch on Beauty (22,363 users, 12,101 items, full softmax): "
        f"**{payload['epoch_time']['sasrec_beauty_epoch_s']:.1f} s** (best of 2, includes set-up).",
        "",
        "## Amazon Beauty — leave-one-out, full ranking, history excluded",
        "",
        markdown_table(payload["beauty"]["rows"], ["model", *METRICS]),
        "",
        "Per seed:",
        "",
        markdown_table(payload["beauty"]["runs"], ["seed", "epochs", "fit_s", *METRICS]),
        "",
        "SASRec with the file's attributes, the order-aware EASE and their blend (NDCG@10 0.0500 / 0.0576 / "
        "0.0607, seed 0) are in `recforge compare experiments/beauty_sequential.toml` and time_to_quality.md "
        "part 5 (the blend 0.0607 / @20 0.0704, mean of seeds 0-2).",
        "",
    ]
    if not args.skip_compare:
        from recforge.cli import _run_and_report
        from recforge.experiment import load_config

        config = load_config("experiments/ml100k_sequential.toml")
        result = _run_and_report(config, __import__("pathlib").Path("reports/ml100k-sequential"))
        table = result.table("next_item")
        keep = [c for c in ("ndcg@10", "hit_rate@10", "ndcg@5", "hit_rate@5", "hit_rate@1") if c in table.columns]
        payload["ml100k"] = table[keep].reset_index().to_dict(orient="records")
        markdown += [
            "## MovieLens 100K — leave-one-out (via `recforge compare experiments/ml100k_sequential.toml`)",
            "",
            markdown_table(payload["ml100k"], [table.index.name or "model", *keep]),
            "",
            SASREC_SEEDS,
        ]
    write_results("sequential", payload, "\n".join(markdown))


if __name__ == "__main__":
    main()
