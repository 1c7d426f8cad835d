"""The exceptions recforge raises. Every one is a `RecforgeError`, so callers can catch them all."""

from __future__ import annotations

from pathlib import Path


class RecforgeError(Exception):
    """Base class of every error recforge raises on purpose."""


class DataFormatError(RecforgeError, ValueError):
    """A data file (or frame) is malformed. The message names the file, line and column when known.

    `line` is 1-based and counts the header line, so it matches what an editor shows; `row` is a frame's
    index label (data given as a frame has no lines); `reason` is the message without the location.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        row: object = None,
    ) -> None:
        self.reason = message
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.row = row
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row!r}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class OutputExistsError(RecforgeError, FileExistsError):
    """An output path holds something recforge did not write (a file where a folder goes, a folder of other
    files): refused rather than replaced, since replacing would delete it."""


class DatasetNotFoundError(RecforgeError, FileNotFoundError):
    """A dataset is neither on disk nor downloadable right now."""


class ConfigError(RecforgeError, ValueError):
    """A configuration (experiment, model, split) is invalid."""


class LeakageError(RecforgeError):
    """An evaluation would let test information into training; refused rather than reported."""


class ArtifactError(RecforgeError):
    """A saved model artifact is missing, truncated, edited, foreign or from another version."""


class NotFittedError(RecforgeError, AttributeError):
    """A model was used before `fit`."""


class UnknownIdError(RecforgeError, KeyError):
    """An external user or item id is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CapabilityError(RecforgeError):
    """A model was asked for something it cannot serve (e.g. a cold user without features)."""


class TrainingDivergedError(RecforgeError, FloatingPointError):
    """Training produced a non-finite loss; the message names the model, epoch and what to lower."""


class NonFiniteScoresError(RecforgeError, FloatingPointError):
    """A model produced NaN scores or predictions; the message names the model and the first query row.
    A NaN would otherwise rank first (torch.topk orders it above everything) or break a JSON answer."""


class InsufficientMemoryError(RecforgeError, MemoryError):
    """A fit would need more memory than the process can get; raised before allocating, with the estimate,
    what is available and what to do instead."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' (for messages about unknown names)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
