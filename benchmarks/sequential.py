"""Sequential recommenders, leave-one-out with full ranking (the user's history excluded).

- Amazon Beauty (`Beauty.txt`, the S3-Rec/ICLRec file): SASRec with full-softmax cross-entropy, mean of
  the given seeds, HR/NDCG@5/10/20, against popularity; published full-ranking results on this file put
  plain SASRec near NDCG@10 0.03 and ICLRec near 0.040.
- Training time of one SASRec epoch on Beauty on this machine (target: under 60 s).
- MovieLens 100K: `experiments/ml100k_sequential.toml` through `recforge compare` (item-KNN, EASE,
  SASRec, GRU4Rec, Model I, Model II), report in reports/ml100k-sequential/.

Run: `python benchmarks/sequential.py [--seeds 0 1 2] [--epochs 80] [--skip-compare]`;
writes results/sequential.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks._common import data_dir, markdown_table, write_results
from recforge.data.loaders import load_amazon_sequences
from recforge.data.splits import leave_last_out
from recforge.evaluation.protocols import next_item_evaluator
from recforge.models import create_model
from recforge.models.config import TrainOptions

BEAUTY_SASREC = {"dropout": 0.5, "batch_size": 256, "eval_every": 2, "early_stopping_patience": 4}
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # per-epoch validation lines
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
        ]
    write_results("sequential", payload, "\n".join(markdown))


if __name__ == "__main__":
    main()
