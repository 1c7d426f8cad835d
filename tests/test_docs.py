"""Documentation that runs: every Python block of the README and the docs is executed (a page's blocks in
order, in one fresh interpreter, in a temp folder, on the real datasets); every `recforge` command line
in a bash block is parsed by the real CLI (command, options and their types; the commands themselves run
in their own tests); the site builds without warnings; a wheel installs in a fresh venv and runs the demo."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def command_lines(page: Path) -> list[str]:
    """`recforge ...` lines of bash blocks (comments cut, continuation lines joined), and the CLI part of a
    `torchrun ... -m recforge.cli ...` line."""
    lines = []
    for body in blocks(page, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("recforge "):
                lines.append(line.removeprefix("recforge "))
            elif "-m recforge.cli " in line:
                lines.append(line.split("-m recforge.cli ", 1)[1])
    return lines


PYTHON_PAGES = [p for p in PAGES if blocks(p, "python")]
COMMANDS = [(p, line) for p in PAGES for line in command_lines(p)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYTHON_PAGES])
def test_python_examples_run(page, tmp_path, data_dir):
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks(page, "python")))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RECFORGE_DATA_DIR": str(data_dir), "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, f"{page.name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_every_documented_command_parses():
    import typer

    from recforge.cli import app

    assert len(COMMANDS) >= 20  # the README and the guides document the CLI; a parser change must show here
    root = typer.main.get_command(app)
    for page, line in COMMANDS:
        args = shlex.split(line)
        try:
            context = root.make_context("recforge", list(args))
            command, rest = root, _remaining(context)
            while hasattr(command, "resolve_command"):  # into the `data` / `spark` groups
                name, command, rest = command.resolve_command(context, rest)
                context = command.make_context(name, rest, parent=context)
                rest = _remaining(context)
        except Exception as exc:  # typer's vendored click raises its own UsageError/BadParameter
            message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
            pytest.fail(f"{page.relative_to(ROOT)}: `recforge {line}` does not parse: {message}")


def _remaining(context) -> list[str]:
    """Arguments a group context left for its subcommand (click moved them to `_protected_args`)."""
    return list(getattr(context, "_protected_args", [])) + list(context.args)


def test_docs_site_builds_without_warnings(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "run_experiment" in api and "Recommendations" in api  # the reference is generated


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path, data_dir):
    """The wheel carries what the package needs (the web page, templates) and nothing it must not (data);
    installed with the pinned dependencies into an empty venv, `recforge demo` runs on MovieLens 100K."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        timeout=600,
    )
    wheel = next((tmp_path / "dist").glob("recforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "recforge/serving/static/index.html" in names and not any(n.endswith((".data", ".csv")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)  # the CPU build on local disk first
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)], check=True, timeout=1800)
    demo = subprocess.run(
        [str(venv / "bin" / "recforge"), "demo", "--output", str(tmp_path / "report")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RECFORGE_DATA_DIR": str(data_dir)},
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (tmp_path / "report" / "report.md").exists()
