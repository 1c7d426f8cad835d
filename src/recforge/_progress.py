"""Progress for long runs: Rich bars in a terminal, plain timestamped lines otherwise, nothing when
disabled (tests, library use).

- In a terminal every bar joins one live display, so a model's per-epoch bar shows under the
  experiment's bar (Rich allows one live display at a time).
- Without a terminal (output to a file, a pipe, CI) each bar prints a line when it starts, when it
  advances (at most one line per `PLAIN_INTERVAL` seconds, always the last step), and a heartbeat line if
  nothing was printed for `HEARTBEAT` seconds, so a log is never silent for more than a minute. Lines
  go to stderr and are flushed at once.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

PLAIN_INTERVAL = 10.0  # seconds between two plain progress lines of one bar
HEARTBEAT = 50.0  # seconds without any line before a "still running" line

_live: Any = None  # the Rich Progress all terminal bars share while one is open
_live_users = 0
_lock = threading.Lock()


def _format(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class _Bar:
    """What a caller holds: `advance` and `update`; a no-op when progress is disabled."""

    def advance(self, steps: float = 1, **fields: Any) -> None:
        """Count `steps` done; `fields` are the values they ended with (e.g. `loss=0.83`), shown with them."""

    def update(self, **fields: Any) -> None:
        """Show live values, e.g. `bar.update(loss=0.83)`."""


class _RichBar(_Bar):
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, steps: float = 1, **fields: Any) -> None:
        if fields:
            self.update(**fields)
        self._progress.advance(self._task, steps)

    def update(self, **fields: Any) -> None:
        self._progress.update(self._task, status=_format(fields))


class _PlainBar(_Bar):
    def __init__(self, description: str, total: float | None, stream: TextIO) -> None:
        self.description, self.total, self.stream = description, total, stream
        self.done = 0.0
        self.status = ""
        self._labels: dict[str, Any] = {}
        self.started = time.monotonic()
        self.last_line = 0.0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"progress {description}", daemon=True)
        self._line("started")
        self._heartbeat.start()

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        elapsed = time.monotonic() - self.started
        count = f"{self.done:g}/{self.total:g}" if self.total is not None else f"{self.done:g}"
        status = f"  {self.status}" if self.status else ""
        with _lock:
            self.stream.write(f"{stamp} {self.description}: {text} {count} ({elapsed:.0f} s){status}\n")
            self.stream.flush()
        self.last_line = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(5.0):
            if time.monotonic() - self.last_line >= HEARTBEAT:
                self._line("still running")

    def advance(self, steps: float = 1, **fields: Any) -> None:
        if fields:
            self.update(**fields)
        self.done += steps
        finished = self.total is not None and self.done >= self.total
        if finished or time.monotonic() - self.last_line >= PLAIN_INTERVAL:
            self._line("done" if finished else "progress")

    def update(self, **fields: Any) -> None:
        """Remember the values for the next line; a change of what is being done (a text field such as
        the model's name, not a loss) is printed at once."""
        self.status = _format(fields)
        labels = {k: v for k, v in fields.items() if isinstance(v, str)}
        if labels and labels != self._labels:
            self._labels = labels
            self._line("working on")

    def close(self) -> None:
        self._stop.set()
        if self.total is None or self.done < self.total:
            self._line("ended")


def _is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True) -> Iterator[_Bar]:
    """`with progress_bar("ALS", total=15) as bar: ... bar.advance(loss=...)` (the step's values print with
    its count; `bar.update(model=...)` shows what is being worked on)."""
    if not enabled:
        yield _Bar()
        return
    stream = sys.stderr
    if not _is_terminal(stream):
        bar = _PlainBar(description, total, stream)
        try:
            yield bar
        finally:
            bar.close()
        return
    with _shared_progress(stream) as progress:
        task = progress.add_task(description, total=total, status="")
        try:
            yield _RichBar(progress, task)
        finally:
            if _live_users > 1:  # a nested bar (a model under the experiment) leaves when it is done
                progress.remove_task(task)


@contextlib.contextmanager
def _shared_progress(stream: TextIO) -> Iterator[Any]:
    global _live, _live_users
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with _lock:
        if _live is None:
            _live = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(file=stream),
                transient=False,
            )
            _live.start()
        _live_users += 1
        progress = _live
    try:
        yield progress
    finally:
        with _lock:
            _live_users -= 1
            if _live_users == 0:
                _live.stop()
                _live = None
