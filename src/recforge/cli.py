"""`recforge` command line. Thin: parses arguments, calls the same library functions a notebook would,
prints with Rich. Errors recforge raises on purpose are printed as one red line with exit code 2.

Why one module of ~600 lines: it holds nothing but ~20 thin commands (options, one library call, a
printed table), kept together so the whole command surface and its help text read in one place; no
logic lives here to split (files -> `evaluation.saved`, experiments -> `experiment`, serving ->
`serving`)."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recforge.errors import ConfigError, RecforgeError

# help text is plain text: Rich markup would eat bracketed words such as "[spark]"
PLAIN = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(help="recforge: recommendations from raw ratings to evaluated, served models.", **PLAIN)
data_app = typer.Typer(help="Inspect and prepare datasets.", **PLAIN)
app.add_typer(data_app, name="data")


@app.callback()
def _options(
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads every fit computes with (default: the cores free when a fit starts; "
            "also RECFORGE_THREADS)",
        ),
    ] = None,
) -> None:
    """recforge: recommendations from raw ratings to evaluated, served models."""
    if threads is not None:
        import os

        from recforge.threads import THREADS_ENV

        os.environ[THREADS_ENV] = str(threads)


spark_app = typer.Typer(help="Preprocess and batch-score on Spark (needs the [spark] extra and Java).", **PLAIN)
app.add_typer(spark_app, name="spark")
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)  # not mixed into output piped on


def _friendly(function: Callable[..., Any]) -> Callable[..., Any]:
    """Print recforge errors as a message instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RecforgeError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        except KeyboardInterrupt:
            errors.print("[bold yellow]interrupted[/] before anything was finished; nothing written")
            raise typer.Exit(130) from None

    return wrapper


def print_frame(frame: Any, title: str, digits: int = 4) -> None:
    """`frame` as a table; when its columns do not fit the terminal, as several tables of the columns in
    order, each with the index (rich would otherwise cut every header and value to "ndcg…")."""
    cells = {c: [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in frame[c]] for c in frame.columns}
    labels = [str(index) for index in frame.index]
    index_width = max([len(str(frame.index.name or "")), *map(len, labels)]) + 4  # borders and padding
    width = {c: max([len(str(c)), *map(len, cells[c])]) + 3 for c in frame.columns}
    groups: list[list[Any]] = [[]]
    for column in frame.columns:
        if groups[-1] and index_width + sum(width[c] for c in groups[-1]) + width[column] > console.width:
            groups.append([])
        groups[-1].append(column)
    for number, columns in enumerate(groups):
        table = Table(title=title if number == 0 else None)
        table.add_column(str(frame.index.name or ""), style="bold")
        for column in columns:
            table.add_column(str(column), justify="right")
        for row, label in enumerate(labels):
            table.add_row(label, *[cells[c][row] for c in columns])
        console.print(table)


# ----------------------------------------------------------------------------- data
@data_app.command("list")
def data_list() -> None:
    """Datasets recforge knows by name."""
    from recforge.data.loaders import DATASETS

    for name, loader in DATASETS.items():
        console.print(f"[bold]{name}[/]  {(loader.__doc__ or '').strip().splitlines()[0]}", markup=True)
    console.print("[bold]table[/]  any CSV/TSV/Parquet file with a column mapping (user=, item=, rating=, ...)")
    console.print("[bold]saved[/]  an Interactions folder written by `recforge data prepare`")


def _loader_options(file: str | None, label: str | None, options: list[str]) -> dict[str, Any]:
    """--file, --name and -o KEY=VALUE as loader keyword options (values read as TOML: 5, 1.5, true, [..])."""
    from recforge._toml import parse_value

    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise RecforgeError(f"-o expects KEY=VALUE, got {option!r}")
        parsed[key.strip()] = parse_value(value.strip())
    if file is not None:
        parsed["file"] = file
    if label is not None:
        parsed["name"] = label
    return parsed


@data_app.command("describe")
@_friendly
def data_describe(
    name: Annotated[str, typer.Argument(help="dataset name (see `recforge data list`), 'table' or 'saved'")],
    path: Annotated[Path | None, typer.Option(help="the dataset's folder, or its interactions file")] = None,
    file: Annotated[
        str | None, typer.Option(help="interactions file inside --path (e.g. another ratings file)")
    ] = None,
    label: Annotated[str | None, typer.Option("--name", help="label for the data (sequence files)")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("-o", help="loader option KEY=VALUE, repeatable (e.g. -o sep=:: -o header=false)"),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Counts, density, ratings histogram and per-user quantiles of a dataset."""
    from recforge.data.loaders import load_dataset

    with console.status(f"loading {name}"):
        data = load_dataset(name, path, **_loader_options(file, label, option or []))
    description = data.describe()
    if json_output:
        import json

        print(json.dumps(description.to_dict(), indent=2, default=str))
    else:
        console.print(description.to_table())


@data_app.command("prepare")
@_friendly
def data_prepare(
    config: Annotated[Path, typer.Argument(help="experiment config (its [dataset] and [[preprocess]] parts are used)")],
    output: Annotated[Path, typer.Option(help="folder to write the prepared Parquet data to")],
) -> None:
    """Load and preprocess a dataset as a config describes, and save it as Parquet."""
    from recforge.data.loaders import load_dataset
    from recforge.data.preprocess import preprocess
    from recforge.experiment import DataConfig, load_config

    spec = load_config(config, DataConfig)
    data = load_dataset(spec.dataset.name, spec.dataset.path, **spec.dataset.options)
    data, reports = preprocess(data, spec.preprocess)
    for report in reports:
        console.print(
            f"{report.step}: removed {report.rows_removed:,} rows "
            f"({report.users_before - report.users_after:,} users, {report.items_before - report.items_after:,} items)"
        )
    data.save(output)
    console.print(f"wrote {output} ({len(data):,} interactions)")


@data_app.command("split")
@_friendly
def data_split(
    config: Annotated[
        Path, typer.Argument(help="experiment or tuning config (its [dataset], [[preprocess]], [split] and seed)")
    ],
    output: Annotated[Path, typer.Option(help="split folder to write (train, test, ... and split.json)")],
    file_format: Annotated[str, typer.Option("--format", help="parquet or csv")] = "parquet",
    seed: Annotated[int | None, typer.Option(help="which of the config's seeds (default: its first)")] = None,
    fold: Annotated[int, typer.Option(min=1, help="which fold of a k-fold split (1..k)")] = 1,
    recbole: Annotated[
        bool, typer.Option("--recbole", help="also RecBole's atomic files and settings, in FOLDER/recbole")
    ] = False,
) -> None:
    """Write the split an experiment config makes as plain files, for another tool to train on; score its
    lists with `recforge evaluate --lists recs.csv --split FOLDER`."""
    from recforge.data.loaders import load_dataset
    from recforge.data.preprocess import preprocess
    from recforge.data.split_files import write_split
    from recforge.experiment import SplitConfig, load_config

    if file_format not in ("parquet", "csv"):
        raise typer.BadParameter(f"--format must be parquet or csv, not {file_format!r}")
    spec = load_config(config, SplitConfig)
    seed = spec.all_seeds[0] if seed is None else seed
    if seed not in spec.all_seeds:
        raise RecforgeError(f"--seed {seed} is not one of the config's seeds {spec.all_seeds}")
    folds = getattr(spec.split, "n_folds", 1)
    if fold > folds:
        raise RecforgeError(f"--fold {fold}: the config's split has {folds} fold(s)")
    with console.status(f"loading {spec.dataset.name}"):
        data = load_dataset(spec.dataset.name, spec.dataset.path, **spec.dataset.options)
        data, _ = preprocess(data, spec.preprocess)
    split = spec.split.make_all(data, seed, spec.dataset.path)[fold - 1]
    validation = None
    if spec.split.validation is not None:
        validation = spec.split.validation.make(split.train, seed, spec.dataset.path)
    source = {"config": str(config), "seed": seed, **({"fold": fold} if folds > 1 else {})}
    write_split(split, output, file_format=file_format, source=source, validation=validation, recbole=recbole)  # type: ignore[arg-type]
    sizes = ", ".join(f"{part} {size:,}" for part, size in split.sizes().items())
    console.print(f"wrote {output}: {escape(split.name)}, seed {seed} ({sizes})")
    if validation is not None:
        sizes = ", ".join(f"{part} {size:,}" for part, size in validation.sizes().items())
        console.print(f"  and {output / 'validation'}: the carve-out of train for tuning ({sizes})")
    if recbole:
        import json

        exported = json.loads((output / "split.json").read_text())["exports"]["recbole"]
        sizes = ", ".join(f"{part} {entry['rows']:,}" for part, entry in exported["parts"].items())
        console.print(
            f"  and {output / 'recbole'}: RecBole's files of dataset {exported['dataset']} ({sizes}), "
            f"its settings in {exported['settings']}"
        )


# ----------------------------------------------------------------------------- experiments
def _run_and_report(config: Any, output: Path, resume: bool = False) -> Any:
    from recforge.evaluation.report import check_report_output, write_report
    from recforge.experiment import run_experiment

    check_report_output(output)  # before the experiment runs, not after it
    result = run_experiment(config, progress=True, runs_folder=output / "runs", resume=resume)
    write_report(result, output)
    from recforge.evaluation.metrics import at_cutoffs

    ranking = at_cutoffs(config.evaluation.ks, ("ndcg", "recall", "precision", "map", "hit_rate"))
    for protocol in config.evaluation.protocols:
        table = result.table(protocol)
        if table.empty:
            continue
        wanted = ("rmse", "mae", "r2", *ranking, "coverage", "novelty")
        keep = [c for c in wanted if c in table.columns]
        label = next(r.results[protocol].protocol for r in result.runs if protocol in r.results)
        print_frame(table[keep], f"{protocol}: {label} — split {result.split.name}, seed {config.all_seeds[0]}")
    for warning in result.below_floor():
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    for run in result.runs:
        for protocol, why in run.skipped.items():
            console.print(f"[yellow]not evaluated:[/] {escape(run.label)} ({protocol}): {escape(why)}")
    console.print(f"report: {output / 'report.md'} and {output / 'report.html'}")
    if result.interrupted:
        console.print(
            f"[bold yellow]interrupted:[/] {len(result.runs)} finished run(s) reported; "
            "run the same command with --resume to continue"
        )
        raise typer.Exit(130)
    return result


@app.command()
@_friendly
def compare(
    config: Annotated[Path, typer.Argument(help="experiment config (TOML)")],
    output: Annotated[
        Path | None, typer.Option(help="report folder (default: the config's `output` or reports/<name>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="keep the finished runs of an interrupted compare into the same output; fit the rest")
    ] = False,
) -> None:
    """Run every model of an experiment config on the same split and write a comparison report. Each
    finished model is kept in <output>/runs as it finishes; Ctrl-C writes a report of the finished ones."""
    from recforge.experiment import load_config

    spec = load_config(config)
    _run_and_report(spec, output or Path(spec.output or f"reports/{spec.name}"), resume=resume)


@app.command()
@_friendly
def demo(
    output: Annotated[Path, typer.Option(help="report folder")] = Path("reports/demo"),
    path: Annotated[
        Path | None, typer.Option(help="folder with MovieLens 100K (default: RECFORGE_DATA_DIR or cache)")
    ] = None,
) -> None:
    """The quickstart: MovieLens 100K -> describe -> split -> fit -> evaluate -> report."""
    from recforge.data.loaders import load_dataset
    from recforge.demo import demo_config

    with console.status("loading MovieLens 100K"):
        data = load_dataset("ml-100k", path)
    console.print(data.describe().to_table())
    _run_and_report(demo_config(path), output)


@app.command()
@_friendly
def tune(
    config: Annotated[Path, typer.Argument(help="tuning config: an experiment config plus a [tune] table")],
    study: Annotated[
        Path | None, typer.Option(help="SQLite file of the Optuna study (default: <config>.study.sqlite); resumes")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="finished trials wanted in the study (default: config)")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="best parameters as TOML (default: <config>.best.toml)")] = None,
) -> None:
    """Hyper-parameter search with Optuna (TPE or random, median pruning of epoch-trained fits) on the
    split's validation carve-out; the study is stored in SQLite, so a stopped search resumes."""
    from recforge._io import write_text_atomic
    from recforge.tune import best_as_toml, load_tune_config
    from recforge.tune import tune as run_tune

    spec = load_tune_config(config)
    study = study or config.with_suffix(".study.sqlite")
    output = output or config.with_suffix(".best.toml")
    result = run_tune(spec, study, trials=trials, progress=True)
    write_text_atomic(output, best_as_toml(result))
    console.print(
        f"best {result['metric']} {result['best_value']:.4f} (trial {result['best_trial']}; "
        f"{result['complete']} complete, {result['pruned']} pruned of {result['trials']}): "
        + escape(str(result["best_params"]))
    )
    console.print(f"study: {study}  best parameters: {output}")


# ----------------------------------------------------------------------------- artifacts and serving
@app.command()
@_friendly
def train(
    config: Annotated[Path, typer.Argument(help="training config (TOML): dataset, preprocess, model, optional index")],
    output: Annotated[Path | None, typer.Option(help="artifact directory (default: the config's `output`)")] = None,
) -> None:
    """Fit one model on a whole dataset and write a model artifact."""
    from recforge.train import load_train_config
    from recforge.train import train as train_model

    path = train_model(load_train_config(config), output, progress=True)
    console.print(f"artifact: {path}")


def _recommendations_table(answer: dict[str, Any], title: str) -> None:
    note = answer["note"]
    table = Table(title=escape(f"{title} (served by {answer['served_by']}{': ' + note if note else ''})"))
    rows = answer["items"]
    # a catalogue without titles (or genres) shows nothing in that column: leave it out
    columns = {
        "rank": lambda rank, row: str(rank),
        "item": lambda rank, row: str(row["item"]),
        "title": lambda rank, row: str(row["title"]),
        "genres": lambda rank, row: ", ".join(row["genres"]),
        "score": lambda rank, row: f"{row['score']:.4f}",
        "because": lambda rank, row: "; ".join(str(reason["title"]) for reason in row.get("because", [])),
    }
    if all(str(row["title"]) == str(row["item"]) for row in rows):
        del columns["title"]
    if not any(row["genres"] for row in rows):
        del columns["genres"]
    if not any(row.get("because") for row in rows):  # not asked for, or nothing to show (the note says why)
        del columns["because"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for rank, row in enumerate(rows, 1):
        table.add_row(*(escape(cell(rank, row)) for cell in columns.values()))
    console.print(table)


@app.command()
@_friendly
def recommend(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory")],
    user: Annotated[str | None, typer.Option("--user", help="one external user id: prints a table")] = None,
    users: Annotated[
        str | None,
        typer.Option("--users", help="CSV/Parquet file with a user column, or 'all' (batch, with --output)"),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="batch output file: .csv, .tsv or .parquet")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="list length")] = 10,
    include_seen: Annotated[bool, typer.Option(help="keep items the user already has")] = False,
    user_column: Annotated[str, typer.Option(help="user column of the --users file")] = "user_id",
    sep: Annotated[str | None, typer.Option(help="separator of a text file (default: sniffed)")] = None,
    unknown: Annotated[str, typer.Option(help="users unknown to the model: raise or drop")] = "raise",
    item: Annotated[
        list[str] | None,
        typer.Option("--item", help="a new user's item, by id or title (repeat for their history): prints a table"),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(help="which of the user's items each recommendation is because of (--users: a because column)"),
    ] = False,
    genre: Annotated[
        list[str] | None, typer.Option("--genre", help="only items of this genre (repeat: any of them)")
    ] = None,
) -> None:
    """Top-k recommendations of a saved model: for one user (--user, a table), for a new user from the items
    they have (--item ID|TITLE, repeated), or for a file of users or every trained user (--users FILE|all
    --output recs.csv|.parquet: user, rank, item, score, served_by, note)."""
    if sum(given is not None for given in (user, users, item)) != 1:
        raise typer.BadParameter("give --user ID, --item ID|TITLE (repeated), or --users FILE|all with --output")
    if user is not None or item:
        from recforge.serving.service import RecommenderService

        service = RecommenderService.from_artifact(model)
        if user is not None:
            answer = service.recommend_user(user, k, exclude_seen=not include_seen, explain=explain, genres=genre)
            _recommendations_table(answer, f"top {k} for user {user}")
            return
        history = list(dict.fromkeys(service.find_item(text) for text in item))  # an item named twice counts once
        answer = service.recommend_new([(i, None) for i in history], k, explain=explain, genres=genre)
        _recommendations_table(answer, f"top {k} for a new user with {_item_names(service, history)}")
        return
    if output is None:
        raise typer.BadParameter("--users needs --output FILE (.csv, .tsv or .parquet)")
    from recforge.evaluation.saved import check_table_output, recommend_file, write_table

    check_table_output(output)  # before the batch, not after it
    fitted = _load_model(model)
    frame = recommend_file(
        fitted,
        users,
        k=k,
        user=user_column,
        sep=_separator(sep),
        unknown=_unknown(unknown),
        exclude_seen=not include_seen,
        explain=explain,
        candidates=_genre_items(fitted, model, genre) if genre else None,
    )
    write_table(frame, output)
    console.print(f"wrote {frame['user'].nunique():,} users x {k} to {output}")


def _genre_items(fitted: Any, path: Path, genres: list[str]) -> Any:
    """Indices of the items of any of `genres`, by the artifact's catalogue (the service's genre rule)."""
    from recforge.serving.catalogue import Catalogue, read_catalogue

    return Catalogue.build(fitted, read_catalogue(path)).items_of_genres(genres)


def _load_model(path: Path) -> Any:
    from recforge.models import load_model

    return load_model(path)


def _separator(sep: str | None) -> str | None:
    """'\\t' typed on a command line means a tab."""
    return None if sep is None else sep.replace("\\t", "\t")


def _names(columns: str | None) -> list[str] | None:
    return None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]


def _unknown(value: str, choices: tuple[str, ...] = ("raise", "drop")) -> Any:
    if value not in choices:
        raise typer.BadParameter(f"--unknown must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}")
    return value


@app.command()
@_friendly
def evaluate(
    model: Annotated[Path | None, typer.Option("--model", help="model artifact directory")] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="held-out interactions: CSV/TSV/Parquet with a header row")
    ] = None,
    lists: Annotated[
        list[Path] | None,
        typer.Option(
            "--lists",
            help="instead of --model: ranked lists of any recommender (user, item, rank), scored against --split's "
            "test part; repeat to compare several (paired Wilcoxon against the first, Holm-adjusted)",
        ),
    ] = None,
    predictions: Annotated[
        list[Path] | None,
        typer.Option(
            "--predictions",
            help="instead of --model: predicted ratings of any recommender (user_id, item_id, prediction, as "
            "`recforge predict` writes), scored on --split's rated test pairs; repeat to compare several",
        ),
    ] = None,
    split: Annotated[
        Path | None, typer.Option("--split", help="split folder of `recforge data split` (--lists, --predictions)")
    ] = None,
    k: Annotated[list[int] | None, typer.Option("-k", min=1, help="cut-offs (repeat: -k 10 -k 20)")] = None,
    user_column: Annotated[str | None, typer.Option(help="user column (default: user_id; --lists: user)")] = None,
    item_column: Annotated[str | None, typer.Option(help="item column (default: item_id; --lists: item)")] = None,
    rating_column: Annotated[
        str | None, typer.Option(help="rating column: adds RMSE/MAE/R2 for a rating model")
    ] = None,
    rank_column: Annotated[str | None, typer.Option(help="--lists: the column ordering each list, 1 first")] = None,
    score_column: Annotated[
        str | None, typer.Option(help="--lists: order each list by this column instead, highest first")
    ] = None,
    prediction_column: Annotated[
        str | None, typer.Option(help="--predictions: the predicted rating's column (default: prediction)")
    ] = None,
    sep: Annotated[str | None, typer.Option(help="separator of a text file (default: sniffed)")] = None,
    columns: Annotated[
        str | None, typer.Option(help="a file without a header row: its field names in order, comma-separated")
    ] = None,
    unknown: Annotated[
        str,
        typer.Option(
            help="rows with a user or item unknown to the model: raise, drop, or miss (unknown users' rows "
            "left out, unknown items counted as relevant items the model could not recommend, as compare does)"
        ),
    ] = "raise",
    output: Annotated[Path | None, typer.Option(help="also write the numbers as JSON")] = None,
) -> None:
    """Evaluate a saved model on a file of held-out interactions (--model, --test), or the ranked lists of
    any recommender on a split folder (--lists, --split): full-ranking metrics over the whole catalogue
    (as `recforge compare`), plus rating metrics for a rating model."""
    from recforge._io import check_output, write_json_atomic
    from recforge.evaluation.saved import evaluate_saved, summary_rows

    if output is not None:
        check_output(output, False, kind="JSON output")  # before the evaluation, not after it
    ks = tuple(sorted(set(k or [10])))
    if lists or predictions or split is not None:
        kind = "lists" if lists else "predictions"
        if model is not None or test is not None or rating_column is not None or unknown != "raise":
            raise typer.BadParameter(
                f"--{kind} and --split evaluate files: give them without --model, --test, --rating-column, --unknown "
                "(a file must use the split's ids)"
            )
        if (lists and predictions) or not (lists or predictions) or split is None:
            raise typer.BadParameter(
                "--lists (or --predictions) and --split go together: the files, and the folder `recforge data "
                "split` wrote"
            )
        if kind == "lists" and prediction_column is not None:
            raise typer.BadParameter("--prediction-column names a column of --predictions files")
        if kind == "predictions" and (rank_column is not None or score_column is not None):
            raise typer.BadParameter("--rank-column and --score-column order --lists")
        wanted = {"user": user_column, "item": item_column, "rank": rank_column, "score": score_column}
        wanted["prediction"] = prediction_column
        _evaluate_given(kind, lists or predictions or [], split, ks, wanted, sep, columns, output)
        return
    if model is None or test is None:
        raise typer.BadParameter(
            "give --model and --test (a saved model), or --lists or --predictions with --split (another tool's output)"
        )
    if rank_column is not None or score_column is not None or prediction_column is not None:
        raise typer.BadParameter("--rank-column, --score-column and --prediction-column read --lists/--predictions")
    result = evaluate_saved(
        _load_model(model),
        test,
        user=user_column or "user_id",
        item=item_column or "item_id",
        rating=rating_column,
        ks=ks,
        sep=_separator(sep),
        unknown=_unknown(unknown, ("raise", "drop", "miss")),
        names=_names(columns),
    )
    import pandas as pd

    summary = result.ranking.summary
    from recforge.evaluation.metrics import at_cutoffs

    names = at_cutoffs(ks)
    print_frame(
        pd.DataFrame(
            [{n: summary[n] for n in [*names, "coverage", "novelty"]}], index=pd.Index([model.name], name="model")
        ),
        f"{result.ranking.protocol} — {test.name}",
    )
    if result.rating is not None:
        rating = result.rating.summary
        print_frame(
            pd.DataFrame([{m: rating[m] for m in ("rmse", "mae", "r2")}], index=pd.Index([model.name], name="model")),
            result.rating.protocol,
        )
    for note in result.ranking.notes:
        console.print(escape(note))
    if result.dropped_unknown:
        what = "unknown user" if unknown == "miss" else "unknown user or item"
        console.print(f"[yellow]left out[/] {result.dropped_unknown:,} of {result.rows:,} rows: {what}")
    if result.missed_unknown:
        console.print(
            f"{result.missed_unknown:,} rows name items the model does not know: counted as relevant items it "
            "could not recommend" + (" (and left out of the rating metrics)" if result.rating is not None else "")
        )
    if output is not None:
        write_json_atomic(output, summary_rows(result))
        console.print(f"wrote {output}")


def _evaluate_given(
    kind: str,
    paths: list[Path],
    folder: Path,
    ks: tuple[int, ...],
    columns: dict[str, str | None],
    sep: str | None,
    names: str | None,
    output: Path | None,
) -> None:
    """`recforge evaluate --lists/--predictions ... --split ...`: a table row per file, and with several
    files each against the first (paired by user: Wilcoxon, Holm)."""
    import pandas as pd

    from recforge._io import write_json_atomic
    from recforge.data.split_files import read_split
    from recforge.evaluation.given import against_first, evaluate_lists, evaluate_predictions
    from recforge.evaluation.metrics import at_cutoffs
    from recforge.evaluation.report_tables import p_value_text

    if len(set(paths)) < len(paths):
        raise typer.BadParameter(f"a --{kind} file is given twice")
    split = read_split(folder)
    read = {"sep": _separator(sep), "names": _names(names)}
    if kind == "lists":
        if columns["rank"] is not None and columns["score"] is not None:
            raise typer.BadParameter("order the lists by --rank-column or by --score-column, not both")
        order = {"rank": None, "score": columns["score"]} if columns["score"] else {"rank": columns["rank"] or "rank"}
        who = {"user": columns["user"] or "user", "item": columns["item"] or "item"}
        results = [evaluate_lists(path, split, ks=ks, **who, **order, **read).ranking for path in paths]  # type: ignore[arg-type]
        wanted, metric, tested = [*at_cutoffs(ks), "coverage", "novelty"], f"ndcg@{max(ks)}", f"ndcg@{max(ks)}"
    else:
        who = {"user": columns["user"] or "user_id", "item": columns["item"] or "item_id"}
        prediction = columns["prediction"] or "prediction"
        results = [evaluate_predictions(path, split, prediction=prediction, **who, **read).rating for path in paths]  # type: ignore[arg-type]
        wanted, metric, tested = ["rmse", "mae", "r2"], "mse", "per-user MSE"
    labels = pd.Index([str(path) for path in paths], name=kind)
    table = pd.DataFrame([{n: r.summary[n] for n in wanted} for r in results], index=labels)
    print_frame(table, f"{results[0].protocol} — {split.name} of {split.data.name}, test part")
    for path, result in zip(paths, results, strict=True):
        console.print(f"{escape(str(path))}: " + escape("; ".join(result.notes)))
    comparison = None
    if len(paths) > 1:
        comparison = against_first([result.per_user[metric] for result in results])
        comparison.index = labels[1:]
        shown = comparison.assign(**{c: comparison[c].map(p_value_text) for c in ("p", "p_holm")})
        print_frame(shown, f"{tested} against {paths[0]} (paired by user: Wilcoxon; p_holm over the files)")
    if output is not None:
        payload: dict[str, Any] = {"protocol": results[0].protocol, "split": str(folder)}
        payload[kind] = {str(p): {**r.summary, "notes": r.notes} for p, r in zip(paths, results, strict=True)}
        if comparison is not None:
            payload["against_first"] = {name: row.to_dict() for name, row in comparison.iterrows()}
        write_json_atomic(output, payload)
        console.print(f"wrote {output}")


@app.command()
@_friendly
def predict(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (a rating model)")],
    pairs: Annotated[Path, typer.Option("--input", help="(user, item) pairs: CSV/TSV/Parquet with a header row")],
    output: Annotated[Path, typer.Option(help="output file: .csv, .tsv or .parquet (adds a prediction column)")],
    user_column: Annotated[str, typer.Option(help="user column")] = "user_id",
    item_column: Annotated[str, typer.Option(help="item column")] = "item_id",
    sep: Annotated[str | None, typer.Option(help="separator of a text file (default: sniffed)")] = None,
    columns: Annotated[
        str | None, typer.Option(help="a file without a header row: its field names in order, comma-separated")
    ] = None,
    unknown: Annotated[
        str,
        typer.Option(
            help="pairs with a user or item unknown to the model: raise, drop, or prior (predicted from what the "
            "model knows: the cold-start rating of the item, or the user's mean over popular items; a prior "
            "column marks them)"
        ),
    ] = "raise",
) -> None:
    """Predicted ratings of a saved rating model for every (user, item) pair of a file."""
    from recforge.evaluation.saved import check_table_output, predict_file, write_table

    check_table_output(output)
    frame = predict_file(
        _load_model(model),
        pairs,
        user=user_column,
        item=item_column,
        sep=_separator(sep),
        unknown=_unknown(unknown, ("raise", "drop", "prior")),
        names=_names(columns),
    )
    write_table(frame, output)
    prior = (
        f" ({int(frame['prior'].sum()):,} of them from the prior: an unknown user or item)" if "prior" in frame else ""
    )
    console.print(f"wrote {len(frame):,} predictions to {output}{prior}")


@app.command()
@_friendly
def similar(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory")],
    item: Annotated[str, typer.Option("--item", help="an item id, or (part of) its title")],
    k: Annotated[int, typer.Option("-k", help="list length")] = 10,
) -> None:
    """Items most similar to an item, by the model's own similarity: the cosine of item vectors (factor and
    neural models), learned item-item weights (EASE, SLIM, item-KNN, RP3β), the members' combined (a blend)."""
    from recforge.serving.service import RecommenderService

    service = RecommenderService.from_artifact(model)
    found = service.find_item(item)
    _recommendations_table(service.similar(found, k), f"{k} items like {_item_names(service, [found])}")


def _item_names(service: Any, ids: list[Any]) -> str:
    """'Toy Story (1995) [1], ...' for a table's title: the catalogue's titles with the ids."""
    catalogue = service.current().catalogue
    titles = [catalogue.titles[service.item_index(i)] for i in ids]
    named = [t if t == str(i) else f"{t} [{i}]" for t, i in zip(titles, ids, strict=True)]
    return ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")


@app.command()
@_friendly
def serve(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (each loads the model)")] = 1,
    store: Annotated[
        str | None,
        typer.Option(
            help="event store URL: sqlite:///path or postgresql://user@host/db (default: SQLite beside the model)"
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="file holding the bearer token writes need (or set RECFORGE_TOKEN)")
    ] = None,
    read_token_file: Annotated[
        Path | None, typer.Option(help="file holding a token reads need too (or set RECFORGE_READ_TOKEN)")
    ] = None,
    max_connections: Annotated[int, typer.Option(help="concurrent connections before 503s")] = 1000,
    keep_alive: Annotated[int, typer.Option(help="seconds an idle keep-alive connection stays open")] = 5,
    stale_reads: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="seconds of a store outage during which reads are still answered, marked X-Recforge-Stale "
            "(or set RECFORGE_STALE_READS; default 0: reads answer 503)",
        ),
    ] = None,
) -> None:
    """Serve a model artifact over HTTP (FastAPI + uvicorn) with the web page at /. Writes are committed to
    the event store before they are acknowledged and need a bearer token; see docs/serving.md (put nginx in
    front for header timeouts: deploy/nginx.conf)."""
    import os

    import uvicorn

    os.environ["RECFORGE_MODEL"] = str(model.resolve())
    if store:
        os.environ["RECFORGE_STORE"] = store
    if token_file is not None:
        os.environ["RECFORGE_TOKEN_FILE"] = str(token_file.resolve())
    if read_token_file is not None:
        os.environ["RECFORGE_READ_TOKEN_FILE"] = str(read_token_file.resolve())
    if stale_reads is not None:
        if not math.isfinite(stale_reads):
            raise ConfigError(f"--stale-reads must be a finite number of seconds, not {stale_reads}")
        os.environ["RECFORGE_STALE_READS"] = repr(stale_reads)
    from recforge.artifacts import read_manifest
    from recforge.serving.app import number_from_environment

    # checked here too: a worker's error stops the server after a traceback from each worker
    if workers > 1:
        read_manifest(model)  # a path that is no artifact, or a corrupted one (one worker loads it cleanly)
    number_from_environment("RECFORGE_STORE_WAIT", 0, float)
    number_from_environment("RECFORGE_STORE_CONNECTIONS", 1, int, least=1)
    number_from_environment("RECFORGE_STALE_READS", 0, float)
    options = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "limit_concurrency": max_connections,
        "timeout_keep_alive": keep_alive,
    }
    from recforge.serving.workers import balanced_workers_supported, listening_socket, run_workers

    if workers == 1:
        from recforge.serving.app import app_from_environment

        try:
            listener = listening_socket(host, port)  # before the model loads: a taken port fails at once
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        application = app_from_environment()
        _announce_serving(model, host, listener.getsockname()[1], workers, store, application.state.service)
        uvicorn.Server(uvicorn.Config(application, **options)).run(sockets=[listener])
    elif balanced_workers_supported():  # a socket per worker: connections spread evenly (serving/workers.py)
        per_worker = {k: v for k, v in options.items() if k not in ("host", "port")}

        def ready(bound: int) -> None:
            _announce_serving(model, host, bound, workers, store, None)

        try:
            status = run_workers(workers, host, port, per_worker, on_ready=ready)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        raise typer.Exit(status)
    else:
        _announce_serving(model, host, port, workers, store, None)
        uvicorn.run("recforge.serving.app:app_from_environment", factory=True, workers=workers, **options)


def _announce_serving(model: Path, host: str, port: int, workers: int, store: str | None, service: Any) -> None:
    """One line on start-up saying what is served where (uvicorn logs only warnings here), with the
    store's password hidden."""
    from recforge.serving.app import number_from_environment, token_from_environment
    from recforge.serving.store import redacted

    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    what = str(model)
    if service is not None:
        served = service.current().model
        what += f" ({served.name}, {served.n_users:,} users, {served.n_items:,} items)"
    if workers > 1:
        what += f" on {workers} workers"
    events = redacted(store) if store else "SQLite beside the model"
    stale = number_from_environment("RECFORGE_STALE_READS", 0.0, float)
    if stale:
        events += f" (reads answered for {stale:g} s of its outage)"
    writes = (
        "need the bearer token"
        if token_from_environment("RECFORGE_TOKEN")
        else "disabled (no --token-file or RECFORGE_TOKEN)"
    )
    console.print(
        f"serving {escape(what)} at {where} — web page {where}/, API docs {where}/docs; "
        f"events: {escape(events)}; writes {writes}; Ctrl+C stops",
        soft_wrap=True,
    )


@app.command()
@_friendly
def retrain(
    config: Annotated[Path, typer.Argument(help="the training config the serving model was trained with")],
    output: Annotated[Path, typer.Option(help="directory for the candidate artifact")],
    serving: Annotated[
        Path | None, typer.Option(help="the serving artifact (default: the newest model promoted in the store)")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="the service's event store URL (default: SQLite beside --serving)")
    ] = None,
    holdout: Annotated[float, typer.Option(help="fraction of the newest event rows held out to compare")] = 0.1,
    k: Annotated[int, typer.Option("-k", help="list length of the comparison (NDCG@k decides)")] = 10,
    tolerance: Annotated[float, typer.Option(help="NDCG@k the candidate may lose and still be promoted")] = 0.0,
    refit: Annotated[bool, typer.Option(help="refit the promoted candidate on every event, hold-out included")] = True,
    promote: Annotated[bool, typer.Option(help="commit a model event so every worker swaps to the candidate")] = True,
) -> None:
    """Train a candidate on the original data plus the service's events, compare it with the serving model on
    the most recent events, and promote it only if it is not worse. Writes <output>.retrain.json/.md."""
    from recforge.serving.retrain import report_paths
    from recforge.serving.retrain import retrain as run_retrain
    from recforge.serving.store import EventStore
    from recforge.train import load_train_config

    if store is None and serving is None:
        raise typer.BadParameter("give --store, or --serving to use the SQLite store beside it")
    events = EventStore(store) if store else EventStore.beside(serving)  # type: ignore[arg-type]
    report = run_retrain(
        load_train_config(config),
        events,
        output,
        serving=serving,
        holdout=holdout,
        k=k,
        tolerance=tolerance,
        refit=refit,
        promote=promote,
        progress=True,
    )
    for name in ("serving", "candidate"):
        if f"{name}_metrics" in report:
            metrics = report[f"{name}_metrics"]
            console.print(f"{name:9s} NDCG@{k} {metrics['ndcg']:.4f}  Recall@{k} {metrics['recall']:.4f}")
    console.print(f"[bold]{report['decision']}[/bold]: {escape(report['reason'])}")
    console.print(f"report: {report_paths(output)[1]}")


# ----------------------------------------------------------------------------- spark
def _read_recipe(path: Path) -> Any:
    from recforge._toml import load_file
    from recforge.data.prepare import PrepareConfig
    from recforge.errors import ConfigError

    try:
        return PrepareConfig(**load_file(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@spark_app.command("prepare")
@_friendly
def spark_prepare(
    source: Annotated[
        Path, typer.Argument(help="a dataset folder (with --dataset), an Interactions directory, or events Parquet")
    ],
    output: Annotated[Path, typer.Argument(help="folder to write the prepared data to")],
    recipe: Annotated[Path, typer.Option("--recipe", help="TOML: steps, split, genres, numeric_ranges, taste")],
    dataset: Annotated[
        str | None, typer.Option(help="read SOURCE with this dataset's loader first (e.g. anime-kaggle, ml-100k)")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="item table (Parquet) for an events-file source")] = None,
    item_id: Annotated[str, typer.Option(help="id column of --items")] = "item_id",
    rating_scale: Annotated[str | None, typer.Option(help="LOW,HIGH for an events-file source")] = None,
    local_threads: Annotated[int, typer.Option(help="Spark local mode cores; 0 = the master spark-submit set")] = 2,
    memory: Annotated[str, typer.Option(help="driver memory in local mode")] = "4g",
) -> None:
    """Run the preparation recipe on Spark; the output equals `recforge.data.prepare` on the same input."""
    import tempfile

    from recforge.errors import DataFormatError
    from recforge.spark.prepare import prepare_spark, prepare_spark_from_interactions, spark_session

    config = _read_recipe(recipe)
    if not source.exists():
        raise DataFormatError("no such file or folder", path=source)
    staging = None
    if dataset is not None:  # the loader reads the raw files; Spark starts from its Interactions directory
        from recforge.data.loaders import load_dataset

        staging = tempfile.TemporaryDirectory(prefix="recforge-spark-")
        load_dataset(dataset, source).save(Path(staging.name) / "interactions")
        source = Path(staging.name) / "interactions"
    elif source.is_dir() and not (source / "meta.json").exists() and not any(source.rglob("*.parquet")):
        raise DataFormatError(
            "is neither an Interactions directory nor events Parquet; for a raw dataset folder pass "
            "--dataset NAME (see `recforge data list`) so recforge's loader reads it",
            path=source,
        )
    with spark_session(local_threads or None, memory) as spark:
        if (source / "meta.json").exists():
            counts = prepare_spark_from_interactions(spark, source, output, config)
        else:
            scale = None if rating_scale is None else tuple(float(v) for v in rating_scale.split(","))
            counts = prepare_spark(spark, source, output, config, items=items, item_id=item_id, rating_scale=scale)
    if staging is not None:
        staging.cleanup()
    console.print(f"wrote {output}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


@spark_app.command("score")
@_friendly
def spark_score(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory")],
    output: Annotated[Path, typer.Option(help="Parquet folder for user, rank, item, score, served_by, note")],
    k: Annotated[int, typer.Option("-k", help="recommendations per user")] = 10,
    partitions: Annotated[int | None, typer.Option(help="Spark partitions over users")] = None,
    local_threads: Annotated[int, typer.Option(help="Spark local mode cores; 0 = the master spark-submit set")] = 2,
    memory: Annotated[str, typer.Option(help="driver memory in local mode")] = "4g",
) -> None:
    """Top-k for every user of a saved model, computed on Spark, written to Parquet."""
    from recforge.artifacts import read_manifest
    from recforge.spark.prepare import spark_session
    from recforge.spark.score import score_spark

    read_manifest(model)  # a wrong path fails before Spark's start-up (5 s), not after it
    with spark_session(local_threads or None, memory) as spark:
        rows = score_spark(spark, model, output, k, partitions=partitions)
    console.print(f"wrote {output}: {rows:,} rows")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
