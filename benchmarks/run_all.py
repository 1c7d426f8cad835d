"""Run every benchmark in turn (`make bench`); each writes its own results/<name>.json and .md.

Order: classic CF, two-tower, approximate top-k, serving load. Pass --quick for smoke runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["classic_cf", "split_seeds", "two_tower", "ann", "serve_load"]
QUICK_FLAGS = {
    "classic_cf": ["--quick"],
    "split_seeds": ["--quick"],
    "two_tower": ["--quick"],
    "ann": ["--quick"],
    "serve_load": ["--seconds", "5"],
}


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name in SCRIPTS:
        print(f"\n=== benchmarks/{name}.py", flush=True)
        command = [sys.executable, "-m", f"benchmarks.{name}", *(QUICK_FLAGS[name] if quick else [])]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
