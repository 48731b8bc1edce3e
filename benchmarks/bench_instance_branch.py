"""What the instance branch costs, and what its speed knobs buy: the stage-2 step with 4 instances per sample against
the global step (no instances), at UMT's comparison dimensions, measured side by side in one run.

    .venv/bin/python benchmarks/bench_instance_branch.py        # METHOD's crops and the DEFAULT_VARIANTS knobs
    .venv/bin/python benchmarks/bench_instance_branch.py --variant crop_mask_ratio=0.95 --rounds 3

Each variant runs `bench_step_vs_base.worker` on the working tree in its own process (fresh, so that its peak RSS
is its own); the variants take turns for `--rounds` rounds, and each cell is the median over every measured step
(time) or over the rounds (memory). Every ratio is against the global step measured in the same run. Memory three
ways, because "the memory of a step" means different things to different readers:

- activations: the CPU allocator's peak live tensor bytes during one step above its start (`cpu_peak_bytes`:
  activations, gradients, temporaries);
- tensors: that plus the resident parameters, buffers and AdamW state (what a GPU's `max_memory_allocated` shows);
- process: the peak resident set size of the worker over its timed steps (`ru_maxrss`: also the Python and
  library footprint and what the allocator keeps cached).

Not a test: it prints a markdown table and asserts nothing. What the knobs cost in learning is measured separately
(`benchmarks/ablation_synthetic.py --compare crop_mask_ratio=0.8 crop_size=32`, the demo's analogues; README).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step_vs_base import REPO_ROOT, run_side  # noqa: E402

from instap_train.factory import validated_overrides  # noqa: E402

DEFAULT_VARIANTS = (
    "crop_mask_ratio=0.9",
    "crop_size=64",
    "crop_size=64,crop_checkpointing=selective,instance_text_checkpointing=selective",
    "crop_size=64,crop_checkpointing=full,instance_text_checkpointing=selective",
)
INSTANCE_TERMS = ("loss_inst_vtc", "loss_inst_vtm", "loss_inst_mlm")


def parse_variant(text: str) -> dict:
    """`field=value,...` as `--config_overrides` takes them (misspelled fields are refused); `sub_config.field`
    names stay dotted for the worker."""
    return {name if parent is None else f"{parent}.{name}": value
            for parent, name, value in validated_overrides(text)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="config overrides of one more step with instances "
                        f"(repeatable; default {' and '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per process after the warm-up step")
    parser.add_argument("--rounds", type=int, default=2, help="turns of every variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    variants = {"global step (no instances)": (True, {}), "4 instances per sample (METHOD)": (False, {})}
    for text in args.variant or DEFAULT_VARIANTS:
        variants[f"4 instances, {text}"] = (False, parse_variant(text))
    runs = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (no_instances, overrides) in variants.items():
            side_args = argparse.Namespace(steps=args.steps, threads=args.threads, no_instances=no_instances,
                                           compile_teacher=False)
            runs[name].append(run_side(REPO_ROOT, side_args, overrides))
            print(f"{name}: round done", file=sys.stderr, flush=True)

    def cell(name):
        results = runs[name]
        activations = statistics.median(r["peak_bytes"] for r in results)
        resident = statistics.median(r["resident_bytes"] for r in results)
        return {
            "ms": 1e3 * statistics.median(t for r in results for t in r["times"]),
            "activations": activations / 2**20,
            "tensors": (activations + resident) / 2**20,
            "process": statistics.median(r["max_rss_bytes"] for r in results) / 2**20,
            "losses": results[0]["losses"],
        }

    cells = {name: cell(name) for name in variants}
    base = cells["global step (no instances)"]
    print(f"\nUMT's dimensions (batch 8, 8 x 112², 4 instances per sample = 32 crop clips), {args.threads} thread(s), "
          f"fused AdamW; medians of {args.rounds} x {args.steps} steps per variant; ratios against the global step\n")
    print("| step | ms | x global | activations MB | x global | tensors MB | x global | process MB | x global "
          "| first-step instance losses (VTC / VTM / MLM) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, c in cells.items():
        losses = " / ".join(f"{c['losses'][t]:.3f}" for t in INSTANCE_TERMS if t in c["losses"]) or "-"
        print(f"| {name} | {c['ms']:.0f} | {c['ms'] / base['ms']:.2f} | {c['activations']:.0f} | "
              f"{c['activations'] / base['activations']:.2f} | {c['tensors']:.0f} | {c['tensors'] / base['tensors']:.2f} "
              f"| {c['process']:.0f} | {c['process'] / base['process']:.2f} | {losses} |")


if __name__ == "__main__":
    main()
