"""Model II (the beauty study's title-embedding model, `text_regression`) against popularity and EASE, next
item, leave-last-out, full ranking with the user's earlier items excluded, mean over seeds:

- MovieLens 100K (titles from u.item): `experiments/ml100k_sequential.toml`'s split, Model II as the study
  published it (MSE onto the next title's embedding) and as recforge trains it by default (a softmax over
  the catalogue's title cosines plus an item bias; docs/models.md says why);
- the anime Kaggle sample with the anime study's filters (titles from its catalogue's `name`):
  `experiments/anime_model2.toml`. Its ratings have no timestamps, so "last" follows the file's order
  (ascending anime_id); see that file.

Amazon Beauty (`Beauty.txt`) is not here: it has no titles (ASINs and numeric attribute ids only), so
Model II does not apply to it.

Run: `python -m benchmarks.model2 [--seeds 0 1 2]`; writes results/model2.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_results

METRICS = ("ndcg@10", "hit_rate@10", "ndcg@20", "hit_rate@20")
MODELS = ("most_popular", "ease", "text_regression (Model II)", "text_regression (Model II as published: MSE)")


def run(path: str, seeds: list[int]) -> tuple[dict, list[dict]]:
    from recforge.experiment import load_config, run_experiment

    config = load_config(path)
    config = config.model_copy(
        update={"seeds": seeds, "models": [m for m in config.models if (m.name or m.model) in MODELS]}
    )
    result = run_experiment(config, progress=True)
    per_seed = []
    for seed in seeds:
        table = result.table("next_item", seed)
        for model, row in table.iterrows():
            per_seed.append({"model": model, "seed": seed, **{m: float(row[m]) for m in METRICS}})
    means = []
    for model in dict.fromkeys(r["model"] for r in per_seed):
        rows = [r for r in per_seed if r["model"] == model]
        entry = {"model": model, "seeds": len(rows)}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows])
            entry[metric] = float(values.mean())
            entry[f"{metric} std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        means.append(entry)
    info = {"dataset": result.data.name, "users": result.data.n_users, "items": result.data.n_items}
    return {"info": info, "means": means}, per_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    payload, markdown = {}, ["# Model II (title embeddings) on next-item prediction", "", __doc__.split("\n\n")[0], ""]
    for key, path in (("ml100k", "experiments/ml100k_sequential.toml"), ("anime", "experiments/anime_model2.toml")):
        summary, per_seed = run(path, args.seeds)
        payload[key] = {**summary, "per_seed": per_seed}
        info = summary["info"]
        columns = ["model", "seeds", *[c for m in METRICS for c in (m, f"{m} std")]]
        markdown += [
            f"## {info['dataset']} ({info['users']} users, {info['items']} items; `{Path(path).name}`)",
            "",
            markdown_table(summary["means"], columns),
            "",
            "Per seed:",
            "",
            markdown_table(per_seed, ["model", "seed", *METRICS]),
            "",
        ]
    write_results("model2", payload, "\n".join(markdown))


if __name__ == "__main__":
    main()
