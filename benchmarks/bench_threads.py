#!/usr/bin/env python
"""Which split of the cores between torch threads and DataLoader workers trains the demo fastest?

Runs `train_scripts/run_align.py` (the demo's recipe on the synthetic InstVL) for a few steps once per
(`--dataloader_num_workers`, `--torch_num_threads`) pair, each in a fresh process, and reports the training steps per
second from the Trainer's own `train_runtime`, as ratios to the first pair measured in the same run.

    python benchmarks/bench_threads.py                      # 60 steps per setting, 4 settings (~4 min on 2 cores)
    python benchmarks/bench_threads.py --settings 2:1 0:2 --steps 100
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps_per_second(workers: int, threads: int, steps: int, output_dir: str) -> float:
    command = [
        sys.executable, os.path.join(ROOT, "train_scripts", "run_align.py"), "--max_steps", str(steps),
        "--dataloader_num_workers", str(workers), "--torch_num_threads", str(threads), "--eval_splits", "",
        "--report_to", "none", "--logging_steps", str(steps), "--output_dir", output_dir,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    match = re.search(r"'train_steps_per_second': '?([0-9.]+)", result.stdout + result.stderr)
    if match is None:
        raise RuntimeError("no train_steps_per_second in the output:\n" + result.stdout[-2000:])
    return float(match.group(1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["2:1", "1:1", "0:2", "0:1"], help="workers:threads pairs")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    rates = {}
    with tempfile.TemporaryDirectory() as work:
        for setting in args.settings:
            workers, threads = (int(part) for part in setting.split(":"))
            rates[setting] = steps_per_second(workers, threads, args.steps, os.path.join(work, setting.replace(":", "_")))
    baseline = next(iter(rates.values()))
    print(f"\nDemo training, {args.steps} steps per setting on {os.cpu_count()} cores")
    print("| workers:threads | steps/s | ratio to first |")
    print("|---|---:|---:|")
    for setting, rate in rates.items():
        print(f"| {setting} | {rate:.2f} | {rate / baseline:.2f} |")
    return rates


if __name__ == "__main__":
    main()
