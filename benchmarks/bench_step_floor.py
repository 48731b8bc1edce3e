"""How far a stage-2 training step is from this machine's matmul floor: the step's matmul FLOPs (forward, backward)
at the rate of one large fp32 matmul measured in the same run, against the step's time, and the share of the step
spent outside matmul kernels. The question it answers: how much faster can the step get without doing less
arithmetic (numerics unchanged)?

    .venv/bin/python benchmarks/bench_step_floor.py                     # UMT's dimensions, global step, 1 thread
    .venv/bin/python benchmarks/bench_step_floor.py --instances --steps 3 --overrides crop_size=64

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one step (forward and backward; matmuls, convolutions and
  whatever attention kernels torch counts), the optimizer excluded.
- Reference rate: `torch.addmm` at `--reference-size` cubed, fp32, the same threads, best of 10, measured after the
  steps. The floor is FLOPs / reference rate: the step's time if every matmul ran at that rate and nothing else took
  any time.
- Step: median of `--steps` steps (forward, backward, fused AdamW) after one warm-up; then one step under
  `torch.profiler` for the self time of the matmul kernels (`aten::addmm`, `mm`, `bmm`, `baddbmm`, the convolution
  kernels) and their achieved rate (their FLOPs over that time; the profiled step is a little slower).
CPU only. Not a test: it prints a markdown table and returns the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_instance_branch import parse_variant
from bench_model import make_batch, make_setups, run_step
from bench_step_vs_base import apply_overrides
from torch.utils.flop_counter import FlopCounterMode

from modeling_instap import InstAPForPreTraining

MATMUL_KERNELS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                  "aten::convolution_backward")
MATMUL_FLOP_OPS = ("addmm", "mm", "bmm", "baddbmm", "convolution", "convolution_backward")


def reference_rate(size: int, repeats: int = 10) -> float:
    """FLOP/s of one `size`-cubed fp32 addmm, best of `repeats` after a warm-up."""
    a, b, bias = torch.randn(size, size), torch.randn(size, size), torch.randn(size)
    torch.addmm(bias, a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.addmm(bias, a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    setup = make_setups(argparse.Namespace(configs=[args.config], batch_size=4, instances_per_sample=2, frames=None,
                                           small_depth=6))[0]
    apply_overrides(setup.config, parse_variant(args.overrides) if args.overrides else None)
    torch.manual_seed(0)
    model = InstAPForPreTraining(setup.config).train()
    batch = make_batch(setup, torch.device("cpu"), args.instances)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)

    def step(seed: int) -> None:
        run_step(model, batch, seed)
        optimizer.step()

    step(0)  # warm-up
    with FlopCounterMode(display=False) as counter:
        run_step(model, batch, seed=1)
    by_op = {str(op).split(".")[-1]: count for op, count in counter.get_flop_counts()["Global"].items()}
    flops = sum(by_op.values())
    matmul_flops = sum(count for op, count in by_op.items() if op in MATMUL_FLOP_OPS)

    times = []
    for seed in range(args.steps):
        start = time.perf_counter()
        step(2 + seed)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(100)
    events = prof.key_averages()
    total_self = sum(event.self_cpu_time_total for event in events) / 1e6
    matmul_self = sum(event.self_cpu_time_total for event in events if event.key in MATMUL_KERNELS) / 1e6

    rate = reference_rate(args.reference_size)
    return {
        "config": setup.name, "instances": args.instances, "threads": args.threads, "flops": flops,
        "reference_size": args.reference_size, "overrides": args.overrides,
        "flops_by_op": by_op, "step_s": step_time, "steps_s": times, "reference_flops_per_s": rate,
        "floor_s": flops / rate, "profiled_step_s": total_self, "matmul_self_s": matmul_self,
        "matmul_rate": matmul_flops / matmul_self if matmul_self else float("nan"),
    }


def report(result: dict) -> str:
    share = result["matmul_self_s"] / result["profiled_step_s"]
    ops = ", ".join(f"{op} {count / 1e9:.1f}" for op, count in sorted(result["flops_by_op"].items(), key=lambda x: -x[1]))
    rows = [
        f"{result['config']} step ({'with instances' if result['instances'] else 'global, no instances'}"
        f"{', ' + result['overrides'] if result['overrides'] else ''}), fp32, "
        f"{result['threads']} thread(s); step times {[round(t * 1e3) for t in result['steps_s']]} ms",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| matmul FLOPs of a step (forward + backward) | {result['flops'] / 1e9:.1f} G ({ops}) |",
        f"| reference rate (one {result['reference_size']}³ fp32 addmm) | {result['reference_flops_per_s'] / 1e9:.1f} GFLOP/s |",
        f"| floor: FLOPs at the reference rate | {result['floor_s'] * 1e3:.0f} ms |",
        f"| step (median, AdamW included) | {result['step_s'] * 1e3:.0f} ms |",
        f"| step / floor | {result['step_s'] / result['floor_s']:.2f} |",
        f"| matmul kernels' share of the profiled step | {share:.0%} |",
        f"| their achieved rate / reference | {result['matmul_rate'] / result['reference_flops_per_s']:.2f} |",
    ]
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="umt", help="bench_model's setup: umt (default), small or tiny")
    parser.add_argument("--instances", action="store_true", help="the step with instance crops (default: global)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overrides", help="config overrides as `--config_overrides` takes them, e.g. crop_size=64")
    parser.add_argument("--reference-size", type=int, default=1024, help="side of the reference matmul")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    return result


if __name__ == "__main__":
    main()
