"""A stage-2 training step of a base commit against the working tree, side by side in one run: step time (forward,
backward, AdamW), peak memory of a step, and the loss terms of the first step on the same fixed batch (the
numerics check: the same initial weights and the same random draws give the same losses to float tolerance).

    .venv/bin/python benchmarks/bench_step_vs_base.py                       # HEAD vs the working tree, UMT's dims
    .venv/bin/python benchmarks/bench_step_vs_base.py --base 08ba2a8 --no-instances --steps 7

The base's `modeling_instap/` is taken with `git archive` into a temporary folder; each side runs in its own
process (one intra-op thread unless `--threads`), put first on `sys.path`. The sides alternate for `--rounds`
rounds so that load on the machine falls on both; times are medians over every measured step of a side, after one
warm-up step per process. Memory is the CPU allocator's peak live tensor bytes during one step above its start
(`bench_model.cpu_peak_bytes`). The dimensions are `bench_model.py --configs umt`'s (ViT 384 x 6, 8 frames at
112², BERT 384 x 6 with fusion from layer 4, batch 8 with 16-token captions; 4 instances per sample unless
`--no-instances`). Not a test: it prints a markdown table and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERMS = ("loss", "loss_rec", "loss_vtc", "loss_vtm", "loss_mlm", "loss_inst_vtc", "loss_inst_vtm", "loss_inst_mlm")


def apply_overrides(config, overrides: dict | None) -> None:
    """Sets InstAPConfig fields (`sub_config.field` for a sub-config's) and validates the result."""
    for name, value in (overrides or {}).items():
        *parent, leaf = name.split(".")
        setattr(getattr(config, parent[0]) if parent else config, leaf, value)
    for part in (config.vision_config, config.text_config, config):
        part.validate_values()


def worker(code_dir: str, steps: int, with_instances: bool, threads: int, compile_teacher: bool,
           overrides: dict | None = None) -> dict:
    """One side in its own process: first-step losses, step times, and memory (peak live tensor bytes of a step
    above its start; the parameters' and optimizer's resident tensor bytes; the process's peak RSS over the timed
    steps). `overrides` sets InstAPConfig fields (`sub_config.field` for a sub-config's) on the UMT-dims config before the
    model and batch are built."""
    sys.path.insert(0, code_dir)
    sys.path.insert(1, os.path.join(REPO_ROOT, "benchmarks"))
    import resource

    import torch

    torch.set_num_threads(threads)
    from bench_model import cpu_peak_bytes, make_batch, make_setups

    import modeling_instap

    assert os.path.dirname(os.path.dirname(modeling_instap.__file__)) == os.path.abspath(code_dir), modeling_instap.__file__
    setup = make_setups(argparse.Namespace(configs=["umt"]))[0]
    apply_overrides(setup.config, overrides)
    torch.manual_seed(0)
    model = modeling_instap.InstAPForPreTraining(setup.config).train()
    if compile_teacher:
        model.distillation.compile_teacher()  # compiled in the untimed first step
    batch = make_batch(setup, torch.device("cpu"), with_instances)
    # The Trainer's default optimizer with torch >= 2.8 ("adamw_torch_fused").
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    torch.manual_seed(1)
    first = model(**batch)
    losses = {name: float(getattr(first, name)) for name in TERMS if getattr(first, name) is not None}
    first.loss.backward()
    optimizer.step()
    times = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(2 + step)
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    # Before the profiled step, whose event records would count too (ru_maxrss is in KiB on Linux).
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = [t for group in optimizer.state.values() for t in group.values() if torch.is_tensor(t)]
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), *state])
    peak = cpu_peak_bytes(model, batch, seed=100)
    return {"losses": losses, "times": times, "peak_bytes": peak, "resident_bytes": resident, "max_rss_bytes": max_rss}


def export_base(rev: str, folder: str) -> str:
    archive = os.path.join(folder, "base.tar")
    subprocess.run(["git", "-C", REPO_ROOT, "archive", "-o", archive, rev, "modeling_instap"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(os.path.join(folder, "base"), filter="data")
    return os.path.join(folder, "base")


def run_side(code_dir: str, args, overrides: dict | None = None) -> dict:
    """`worker` in a fresh process (so that its peak RSS is its own); `args` needs steps, threads, no_instances and
    compile_teacher."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", code_dir, "--steps", str(args.steps),
               "--threads", str(args.threads)] + (["--no-instances"] if args.no_instances else [])
    if args.compile_teacher and code_dir == REPO_ROOT:
        command.append("--compile-teacher")
    if overrides:
        command += ["--overrides", json.dumps(overrides)]
    environment = dict(os.environ)
    if code_dir == REPO_ROOT:
        environment.update(getattr(args, "working_env", None) or {})
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"worker for {code_dir} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare against (default HEAD)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per process after the warm-up step")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-instances", action="store_true", help="the global step (no instance crops)")
    parser.add_argument("--compile-teacher", action="store_true",
                        help="the working tree's side runs its teacher compiled (InstAPTeacherDistillation.compile_teacher)")
    parser.add_argument(
        "--working-env", nargs="+", default=[], metavar="NAME=VALUE",
        help="environment variables for the working tree's processes only, e.g. with --base HEAD the allocator setting "
             "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.working_env = dict(item.split("=", 1) for item in args.working_env)
    except ValueError:
        parser.error(f"--working-env takes NAME=VALUE items, got {args.working_env}")
    if args.worker:
        result = worker(args.worker, args.steps, not args.no_instances, args.threads, args.compile_teacher,
                        args.overrides)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as folder:
        sides = {"base": export_base(args.base, folder), "working tree": REPO_ROOT}
        results = {name: [] for name in sides}
        for round_number in range(args.rounds):
            for name, code in sides.items():
                results[name].append(run_side(code, args))
            # Each round's medians, so that the machine's drift between rounds shows beside the overall ratio.
            print(f"round {round_number + 1}: " + ", ".join(
                f"{name} {1e3 * statistics.median(results[name][-1]['times']):.0f} ms" for name in sides
            ), flush=True)
    base_rev = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", args.base], capture_output=True,
                              text=True).stdout.strip()
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "step_ms": 1e3 * statistics.median(t for run in runs for t in run["times"]),
            "peak_mb": statistics.median(run["peak_bytes"] for run in runs) / 2**20,
            "losses": runs[0]["losses"],
        }
    base, work = summary["base"], summary["working tree"]
    kind = "global step (no instances)" if args.no_instances else "step with 4 instances per sample"
    working_setup = ", the working tree's teacher compiled" if args.compile_teacher else ""
    working_setup += "".join(f", the working tree's {name}={value}" for name, value in args.working_env.items())
    print(f"\n{kind}, UMT's dimensions, {args.threads} thread(s), base {base_rev}{working_setup}; medians of "
          f"{args.rounds} x {args.steps} steps per side\n")
    print("| | base | working tree | working / base |\n|---|---:|---:|---:|")
    print(f"| step ms | {base['step_ms']:.0f} | {work['step_ms']:.0f} | {work['step_ms'] / base['step_ms']:.3f} |")
    print(f"| peak MB | {base['peak_mb']:.0f} | {work['peak_mb']:.0f} | {work['peak_mb'] / base['peak_mb']:.3f} |")
    for term, value in base["losses"].items():
        other = work["losses"].get(term, float("nan"))
        print(f"| {term} (first step) | {value:.6f} | {other:.6f} | rel. diff {abs(other - value) / abs(value):.1e} |")


if __name__ == "__main__":
    main()
