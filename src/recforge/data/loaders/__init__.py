"""Dataset loaders. `load_dataset(name, path=None)` resolves a dataset by name; each source has its own module.

Resolution order for the files: the `path` you pass, then `$RECFORGE_DATA_DIR/<name>/`, then the cache
(`$RECFORGE_CACHE_DIR`, default ~/.cache/recforge), then a verified download where one is published.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from recforge.data.interactions import Interactions
from recforge.data.loaders.amazon import load_amazon_reviews, load_amazon_sequences, read_amazon_metadata
from recforge.data.loaders.anime import load_anime_kaggle, load_anime_mal, read_anime_catalogue
from recforge.data.loaders.movielens import (
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_100k_fold,
    load_movielens_latest_small,
)
from recforge.data.loaders.sequences import load_sequence_file
from recforge.data.loaders.tabular import load_table
from recforge.errors import ConfigError, did_you_mean

DATASETS: dict[str, Callable[..., Interactions]] = {
    "ml-100k": load_movielens_100k,
    "ml-1m": load_movielens_1m,
    "ml-latest-small": load_movielens_latest_small,
    "anime-kaggle": load_anime_kaggle,
    "anime-mal": load_anime_mal,
    "amazon-beauty": load_amazon_sequences,
    "sequence-file": load_sequence_file,
}


def load_dataset(name: str, /, path: str | Path | None = None, **options: Any) -> Interactions:
    """Load a named dataset (see `DATASETS`), or a saved recforge interactions directory by path.

    `path` is the dataset's folder or its main file; options go to the loader (every named dataset takes
    `file=` for its interactions file and `features=`; `name=` relabels sequence files).
    `name="table"` reads any CSV/Parquet file with a column mapping passed as options
    (user=, item=, rating=, timestamp=, rating_scale=, and header=False with columns=[...] for a file
    without a header row).
    """
    if name == "table":
        if path is None:
            raise ConfigError("dataset 'table' needs a path")
        return load_table(path, **_checked_options(load_table, name, options))
    if name == "saved":
        if path is None:
            raise ConfigError("dataset 'saved' needs a path")
        return Interactions.load(path, **_checked_options(Interactions.load, name, options))
    if name not in DATASETS:
        known = [*sorted(DATASETS), "table", "saved"]
        raise ConfigError(f"unknown dataset {name!r}{did_you_mean(name, known)}; known: {known}")
    return DATASETS[name](path, **_checked_options(DATASETS[name], name, options))


def _checked_options(loader: Callable[..., Any], name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` when `loader` takes them all and they include its required ones; else a ConfigError that
    names the option and lists the loader's own (a TypeError from the call names neither the dataset nor
    what it accepts)."""
    parameters = list(inspect.signature(loader).parameters.values())[1:]  # after the path
    accepted = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters)
    unknown = [] if open_ended else [key for key in options if key not in accepted]
    if unknown:
        raise ConfigError(
            f"dataset {name!r} takes no option {unknown[0]!r}{did_you_mean(unknown[0], accepted)}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    required = [p.name for p in parameters if p.default is p.empty and p.name not in options and p.name in accepted]
    if required:
        what = ": the names of the file's columns (on the command line: -o user=COLUMN)" if name == "table" else ""
        raise ConfigError(f"dataset {name!r} needs the option(s) {', '.join(required)}{what}")
    return _typed_options(loader, name, options)


def _typed_options(loader: Callable[..., Any], name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` checked against the loader's annotations, and converted where that is unambiguous (TOML's
    `[1, 5]` to a tuple, "no" to False); a ConfigError naming the option otherwise (a rating scale given as
    the text "1,5" failed deep inside the loader, `header=no` read as true)."""
    hints = typing.get_type_hints(loader)
    checked = dict(options)
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            checked[key] = pydantic.TypeAdapter(hints[key]).validate_python(value)
        except pydantic.ValidationError:
            expected = _in_words(hints[key])
            raise ConfigError(f"dataset {name!r} option {key!r} should be {expected}; got {value!r}") from None
    return checked


def _in_words(hint: Any) -> str:
    """A loader option's annotation as a reader of a config would say it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_in_words(arg) for arg in args if arg is not type(None)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return f"a list of {len(args)} numbers, e.g. [1, 5]" if set(args) <= {int, float} else f"a list of {len(args)}"
    if origin in (list, collections.abc.Sequence):
        return 'a list such as ["user", "item"]' if args == (str,) else "a list"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}.get(
        hint, str(hint)
    )


__all__ = [
    "DATASETS",
    "load_amazon_reviews",
    "load_amazon_sequences",
    "load_anime_kaggle",
    "load_anime_mal",
    "load_dataset",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_movielens_100k_fold",
    "load_movielens_latest_small",
    "load_sequence_file",
    "load_table",
    "read_amazon_metadata",
    "read_anime_catalogue",
]
