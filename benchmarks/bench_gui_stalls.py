"""GUI stall benchmark: napari's longest GUI-thread stall per step while every dock opens and runs.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/bench_gui_stalls.py [--runs 3]

Runs ``tests/gui_stalls.py`` (a 10 ms timer in napari's GUI thread, 1280x800 window, software OpenGL
under Xvfb) ``--runs`` times in fresh interpreters on the inputs ``tests/test_gui_stalls.py`` prepares,
and writes ``benchmarks/results/gui_stalls.json``: each step's longest stall per run and its median over
the runs, and the load average around them (check ``cat /proc/loadavg`` first: other processes' work
shows up as stalls). Steps named ``open ...`` open a dock; the others run a dock on the samples, which
includes napari adding the result layers (its layer controls, and shaders compiled by Mesa on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
RESULTS = REPO / "benchmarks" / "results" / "gui_stalls.json"


def measure(folder: Path) -> dict:
    """One run of ``tests/gui_stalls.py`` in a fresh interpreter: its report."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, str(TESTS / "gui_stalls.py"), str(folder)], capture_output=True,
                          text=True, timeout=900, env=environment, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from test_gui_stalls import prepare

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        folder = prepare(Path(scratch))
        runs = [measure(folder)["per_step_ms"] for _ in range(args.runs)]
    steps = [step for step in runs[0] if step != "start"]
    median = {step: round(statistics.median(run[step] for run in runs), 1) for step in steps}
    opening = {step: ms for step, ms in median.items() if step.startswith("open ") and "sample" not in step}
    result = {
        "label": "measured on the bundled samples and tiny generated inputs (nothing chosen on them)",
        "runs": args.runs,
        "median_ms": median,
        "per_run_ms": runs,
        "longest_median_opening_a_dock_ms": max(opening.values()),
        "longest_median_running_a_dock_ms": max(
            ms for step, ms in median.items() if step not in opening and step != "open the sample field"),
        "load_average_1min_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cores": os.cpu_count(),
        "display": "Xvfb with Mesa's software OpenGL (llvmpipe)",
        "command": f"benchmarks/bench_gui_stalls.py --runs {args.runs}",
    }
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median_ms"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
