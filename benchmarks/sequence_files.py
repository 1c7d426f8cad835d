"""Beauty's sequential recipe on other files of Beauty.txt's format, which it was not chosen on.

Issue 19 asks that configurations generalise to other sequence files of the S3-Rec/ICLRec family (Sports,
Toys, Yelp, LastFM: `user item item ...` lines plus `<name>_item2attributes.json`). Only Beauty is on this
machine, so files of that format are made from the other real data here, each unlike Beauty in a way a
file of the family can be:

- `ml100k`: MovieLens 100K, each user's ratings in time order (ties by item id), 5-core, genres as the
  attribute ids: 943 users with 105 items each (Beauty: 22,363 with 8.9), the shape of LastFM's file.
- `mlsmall`: ml-latest-small the same way: 610 users, 148 items each, 3,650 items.
- `beautyhalf`: a random half of Beauty's users (seed 7) with Beauty's attributes: a file of Toys' size.

Each runs `experiments/beauty_sequential.toml` unchanged but for the file (leave-one-out, full ranking,
history excluded, seed 0) through `run_experiment`, as `recforge compare` would.

Run: `python -m benchmarks.sequence_files [--files ml100k mlsmall beautyhalf] [--without-min-steps]`;
writes results/sequence_files.json and .md (`--without-min-steps` drops the recipe's step budget, to see
what it does; those results go to sequence_files_without_min_steps.*).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import data_dir, markdown_table, write_results
from recforge.experiment import load_config, run_experiment

CONFIG = Path(__file__).parents[1] / "experiments" / "beauty_sequential.toml"
FILES = ("ml100k", "mlsmall", "beautyhalf")
METRICS = ("ndcg@10", "ndcg@20", "hit_rate@10")


def _five_core(frame: pd.DataFrame) -> pd.DataFrame:
    while True:
        users = frame.groupby("user").item.transform("size")
        items = frame.groupby("item").user.transform("size")
        keep = (users >= 5) & (items >= 5)
        if keep.all():
            return frame
        frame = frame[keep]


def _write_sequences(folder: Path, name: str, frame: pd.DataFrame, genres: dict[int, list[int]]) -> Path:
    """`frame` (user, item, time) as `name.txt` and `name_item2attributes.json`, ids renumbered from 1."""
    frame = _five_core(frame).sort_values(["user", "time", "item"], kind="stable")
    users = {user: index + 1 for index, user in enumerate(pd.unique(frame.user))}
    items = {item: index + 1 for index, item in enumerate(pd.unique(frame.sort_values("time", kind="stable").item))}
    lines = [
        " ".join([str(users[user])] + [str(items[item]) for item in group.item])
        for user, group in frame.groupby("user", sort=False)
    ]
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    attributes = {str(items[item]): genres.get(item, []) for item in items}
    (folder / f"{name}_item2attributes.json").write_text(json.dumps(attributes))
    return folder / f"{name}.txt"


def make_file(name: str, folder: Path) -> Path:
    data = data_dir()
    if name == "ml100k":
        ratings = pd.read_csv(data / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "time"])
        catalogue = pd.read_csv(data / "ml-100k" / "u.item", sep="|", header=None, encoding="latin-1")
        flags = catalogue.iloc[:, 5:24].to_numpy()
        genres = {
            int(item): [int(g) + 1 for g in np.flatnonzero(row)] for item, row in zip(catalogue[0], flags, strict=True)
        }
        return _write_sequences(folder, name, ratings, genres)
    if name == "mlsmall":
        ratings = pd.read_csv(data / "ml-latest-small" / "ratings.csv")
        ratings = ratings.rename(columns={"userId": "user", "movieId": "item", "timestamp": "time"})
        movies = pd.read_csv(data / "ml-latest-small" / "movies.csv")
        names = sorted({genre for text in movies.genres for genre in text.split("|")})
        genres = {
            int(m): [names.index(g) + 1 for g in text.split("|")]
            for m, text in zip(movies.movieId, movies.genres, strict=True)
        }
        return _write_sequences(folder, name, ratings, genres)
    if name == "beautyhalf":
        lines = (data / "amazon-beauty" / "Beauty.txt").read_text().splitlines()
        keep = np.sort(np.random.default_rng(7).choice(len(lines), len(lines) // 2, replace=False))
        (folder / "beautyhalf.txt").write_text("\n".join(lines[k] for k in keep) + "\n")
        attributes = (data / "amazon-beauty" / "Beauty_item2attributes.json").read_text()
        (folder / "beautyhalf_item2attributes.json").write_text(attributes)
        return folder / "beautyhalf.txt"
    raise SystemExit(f"unknown file {name!r}; choose from {FILES}")


def run(name: str, folder: Path, without_min_steps: bool) -> dict:
    config = load_config(CONFIG)
    dataset = config.dataset.model_copy(update={"name": "sequence-file", "path": str(make_file(name, folder))})
    models = config.models
    if without_min_steps:
        models = [_without_min_steps(model) for model in models]
    config = config.model_copy(update={"dataset": dataset, "models": models, "name": f"beauty-recipe-{name}"})
    result = run_experiment(config)
    table = result.table("next_item")
    data = result.data
    shape = {"users": data.n_users, "items": data.n_items, "interactions": len(data)}
    rows = [
        {"file": name, "model": label, **{m: round(float(table.loc[label, m]), 4) for m in METRICS}}
        for label in table.index
    ]
    fits = {fitted.label: round(fitted.fit_seconds) for fitted in result.runs}
    for row in rows:
        row["fit_s"] = fits.get(row["model"])
    return {"file": name, "shape": shape, "rows": rows, "below_popularity": result.below_floor()}


def _without_min_steps(model):
    """The experiment's model entry with `min_steps` dropped from its parameters and from a blend's members'."""
    params = json.loads(json.dumps(model.params))  # a deep copy
    for spec in [params, *params.get("members", [])]:  # a member keeps its own under "params"
        spec.get("params", spec).pop("min_steps", None)
    return model.model_copy(update={"params": params})


def render(results: list[dict], budget: str) -> str:
    rows = [row for result in results for row in result["rows"]]
    shapes = "\n".join(f"- `{r['file']}`: {r['shape']}" for r in results)
    warnings = [w for r in results for w in r["below_popularity"]]
    return (
        f"# Beauty's sequential recipe on files it was not chosen on ({budget})\n\n"
        + (__doc__ or "").split("Run:")[0].strip()
        + f"\n\nFiles:\n{shapes}\n\n"
        + markdown_table(rows, ["file", "model", *METRICS, "fit_s"])
        + "\n\nBelow popularity: "
        + ("; ".join(warnings) if warnings else "none")
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    parser.add_argument("--without-min-steps", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = [run(name, Path(folder), args.without_min_steps) for name in args.files]
    budget = "without `min_steps`" if args.without_min_steps else "as shipped (`min_steps = 1100`)"
    text = render(results, budget)
    stem = "sequence_files_without_min_steps" if args.without_min_steps else "sequence_files"
    write_results(stem, {"budget": budget, "files": results}, text)
    print(text)


if __name__ == "__main__":
    main()
