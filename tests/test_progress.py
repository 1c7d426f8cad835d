"""Plain progress lines (no terminal: logs, CI) print each step's values with that step's count."""

from __future__ import annotations

from recforge import _progress
from recforge._progress import progress_bar


def test_a_plain_line_shows_the_values_of_the_step_it_counts(capsys, monkeypatch):
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL", 0.0)  # a line per step
    with progress_bar("fit", 3) as bar:
        for loss in (9.0, 8.0, 7.0):
            bar.advance(loss=loss)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("fit: started 0/3 (0 s)")
    counted = [line.split("fit: ")[1] for line in lines if "progress" in line or "done" in line]
    assert [line.split(" (")[0] for line in counted] == ["progress 1/3", "progress 2/3", "done 3/3"]
    assert [line.split("loss=")[1] for line in counted] == ["9", "8", "7"]


def test_values_are_kept_when_a_step_prints_no_line(capsys):
    with progress_bar("fit", 2) as bar:  # the steps come faster than PLAIN_INTERVAL: only the last prints
        bar.advance(loss=1.5)
        bar.advance(loss=0.5)
    done = [line for line in capsys.readouterr().err.splitlines() if "done" in line]
    assert len(done) == 1 and done[0].endswith("loss=0.5")
