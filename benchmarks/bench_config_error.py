"""Time from ``python -m modmimic.train`` with a typo'd key to its error message (target < 2 s on an idle machine).

    python benchmarks/bench_config_error.py [--repeat 5]

Runs the command line in fresh processes and prints the median and min wall time (JSON). Not a test: the number
depends on the machine and its load."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CMD = [sys.executable, "-m", "modmimic.train", "recipe=bc", "train.num_epoch=2"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        p = subprocess.run(CMD, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if p.returncode != 2 or "train.num_epochs" not in p.stderr:
            sys.exit(f"unexpected result (exit {p.returncode}): {p.stderr.strip()}")
    print(json.dumps({"command": " ".join(CMD[1:]), "median_s": round(statistics.median(times), 3),
                      "min_s": round(min(times), 3), "repeat": args.repeat, "message": p.stderr.strip()}))


if __name__ == "__main__":
    main()
