"""Benchmark one stage-2 step of InstAPForPreTraining (teacher on, instances on): forward + backward time and peak
memory, for mask ratio 0 vs 0.8 and with/without gradient checkpointing, as ratios against the unmasked,
non-checkpointed step of the same config measured in the same run; plus the instance branch's share of the step and
a per-component profile of one step (teacher, vision scenes and crops, attention pool, text and fusion passes, MLM
head, loss functions, backward, optimizer; medians of >= 5 steps after a warm-up).

    .venv/bin/python benchmarks/bench_model.py                      # tiny + small, CPU (1 thread), ~1-3 min
    .venv/bin/python benchmarks/bench_model.py --configs small --steps 5 --device cuda

Memory, honestly labelled:
- CUDA: `torch.cuda.max_memory_allocated()` during the step minus the allocation at its start.
- CPU: the peak of the CPU allocator's live bytes during the step, above the level at its start, read from the
  allocation events that `torch.profiler` (profile_memory=True) records for every tensor allocation and free.
  It counts tensor memory only (no allocator caching, no Python objects) and is measured in a separate, profiled
  step (the profiler slows the step down, so times come from unprofiled steps).
Times are the best (minimum) of `--steps` steps, the variants interleaved step by step: on a shared machine other
load only ever adds time, so the minimum is the least disturbed estimate. The default is one intra-op thread on
CPU (`--threads` to change): on a shared 2-core machine more threads mostly measure oversubscription.
Not a test: it prints a markdown table on stdout and asserts nothing (the CPU profiler logs start/stop lines on
stderr).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass

import torch

from modeling_instap import InstAPConfig, InstAPForPreTraining  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Configurations and batches
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    config: InstAPConfig
    batch_size: int
    instances_per_sample: int
    num_frames: int
    text_length: int
    default_steps: int


def small_config(depth: int) -> InstAPConfig:
    """ViT width 256 / 4 heads / `depth` blocks, 8 frames at 112² with patch 16 (7x7 grid, 392 tokens per clip);
    BERT width 256 with `depth` layers, the last third fusion; a CLIP-like teacher of the same size."""
    fusion = depth - max(1, depth // 3)
    return InstAPConfig(
        vision_config={
            "hidden_size": 256, "num_hidden_layers": depth, "num_attention_heads": 4, "intermediate_size": 1024,
            "image_size": 112, "patch_size": 16, "num_frames": 8, "drop_path_rate": 0.1,
        },
        text_config={
            "vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": depth, "num_attention_heads": 4,
            "intermediate_size": 1024, "max_position_embeddings": 64, "fusion_layer": fusion,
        },
        teacher_config={
            "hidden_size": 256, "num_hidden_layers": depth, "num_attention_heads": 4, "intermediate_size": 1024,
            "image_size": 112, "patch_size": 16, "projection_dim": 256, "hidden_act": "quick_gelu",
        },
        projection_dim=256,
        teacher_image_size=112,
        teacher_num_layers=min(3, depth),
    )


def umt_dims_config() -> InstAPConfig:
    """The dimensions of the speed issue's comparison with UMT's code: ViT 384 x 6 blocks, 6 heads, 8 frames at 112²
    (patch 16); BERT 384 x 6 layers with fusion from layer 4; a teacher of the same size. Batch 8, 16-token
    captions, 4 instances per sample (`--configs umt`)."""
    config = small_config(6)
    for part in (config.vision_config, config.text_config, config.teacher_config):
        part.hidden_size, part.num_attention_heads, part.intermediate_size = 384, 6, 1536
    config.text_config.fusion_layer = 4
    config.teacher_config.projection_dim = 384
    config.projection_dim = 256
    config.text_config.encoder_hidden_size = 384
    return config


def make_setups(args) -> list[Setup]:
    setups = []
    for name in args.configs:
        if name == "tiny":
            config = InstAPConfig.from_preset("tiny")
            setups.append(Setup("tiny", config, args.batch_size, args.instances_per_sample, args.frames or 4, 16, 10))
        elif name == "small":
            config = small_config(args.small_depth)
            setups.append(Setup("small", config, args.batch_size, args.instances_per_sample, args.frames or 8, 32, 3))
        elif name == "umt":
            setups.append(Setup("umt", umt_dims_config(), 8, 4, 8, 16, 5))
        else:
            raise SystemExit(f"unknown config {name!r}; choose from tiny, small, umt")
    return setups


def make_batch(setup: Setup, device: torch.device, with_instances: bool) -> dict[str, torch.Tensor]:
    config, b, k = setup.config, setup.batch_size, setup.instances_per_sample
    g = torch.Generator().manual_seed(0)
    size, crop, t, length = config.vision_config.image_size, config.crop_size, setup.num_frames, setup.text_length
    text = config.text_config

    def captions(count):
        ids = torch.randint(4, text.vocab_size, (count, length), generator=g)
        ids[:, 0] = text.cls_token_id
        ids[:, -1] = text.sep_token_id
        return ids, torch.ones_like(ids)

    ids, mask = captions(b)
    batch = {
        "pixel_values": torch.randn(b, t, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "source_ids": torch.arange(b),
    }
    if with_instances:
        index = torch.arange(b).repeat_interleave(k)
        ids, mask = captions(b * k)
        batch.update(
            instance_pixel_values=torch.randn(b * k, t, 3, crop, crop, generator=g),
            instance_input_ids=ids,
            instance_attention_mask=mask,
            instance_sample_index=index,
        )
    return {key: value.to(device) for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    ratio: float
    checkpointing: bool
    instances: bool

    @property
    def label(self) -> str:
        return f"rho={self.ratio:g}, ckpt={'on' if self.checkpointing else 'off'}, inst={'on' if self.instances else 'off'}"


def configure(model: InstAPForPreTraining, variant: Variant) -> None:
    model.config.video_mask_ratio = variant.ratio  # crops follow their media's ratio too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if variant.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif model.is_gradient_checkpointing:
            model.gradient_checkpointing_disable()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step(model: InstAPForPreTraining, batch: dict, seed: int) -> float:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**batch)
    out.loss.backward()
    return float(out.loss.detach())


def timed_step(model, batch, device, seed) -> float:
    synchronize(device)
    start = time.perf_counter()
    run_step(model, batch, seed)
    synchronize(device)
    return time.perf_counter() - start


def cpu_peak_bytes(model, batch, seed) -> int:
    """Peak live bytes of the CPU allocator during one step, above the level at its start (torch.profiler)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_step(model, batch, seed)
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(model, batch, device, seed) -> int:
    model.zero_grad(set_to_none=True)
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_step(model, batch, seed)
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def encoder_only_time(model, batch, device, ratio: float, steps: int) -> float:
    """Best fwd+bwd time of the student video encoder alone on the scenes and crops at mask ratio `ratio`."""
    from modeling_instap.masking import random_token_mask

    vision = model.instap.vision_model
    clips = torch.cat([batch["pixel_values"], batch["instance_pixel_values"]])
    count, frames = clips.shape[:2]
    patch = model.config.vision_config.patch_size
    per_frame = (clips.shape[-2] // patch) * (clips.shape[-1] // patch)
    mask = random_token_mask(count, frames, per_frame, ratio, device=device) if ratio > 0 else None
    times = []
    for _ in range(steps + 1):
        vision.zero_grad(set_to_none=True)
        synchronize(device)
        start = time.perf_counter()
        vision(clips, bool_masked_pos=mask).pooler_output.sum().backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


COMPONENT_LOSSES = ("contrastive_loss", "local_contrastive_loss", "matching_loss", "mlm_loss", "reconstruction_loss")


def component_profile(model: InstAPForPreTraining, batch: dict, device: torch.device, steps: int) -> dict[str, float]:
    """Median seconds of each part of one stage-2 step with instances, over `steps` steps after one warm-up:
    forward time per component (forward hooks; the vision encoder split into scene and crop calls by their batch
    size, the text encoder into its text and fusion calls), the loss functions (wrapped for the run), the whole
    backward and an AdamW step. Parts inside another part (a loss inside a forward) are not double counted: hooks
    time only the outermost component active."""
    import statistics

    import modeling_instap.modeling_instap as modeling

    scenes = batch["pixel_values"].shape[0]
    timings: dict[str, list[float]] = {}
    current: dict[str, float] = {}
    active: list[str] = []

    def begin(name):
        if not active:
            synchronize(device)
            current["start"] = time.perf_counter()
        active.append(name)

    def end():
        name = active.pop()
        if not active:
            synchronize(device)
            current[name] = current.get(name, 0.0) + time.perf_counter() - current["start"]

    def vision_name(args, kwargs):
        pixels = args[0] if args else kwargs.get("pixel_values")
        return "vision encoder, scenes" if pixels.shape[0] == scenes else "vision encoder, crops"

    def text_name(args, kwargs):
        return "text encoder, fusion (VTM/MLM)" if kwargs.get("encoder_hidden_states") is not None else "text encoder"

    handles = []
    for module, namer in (
        *((head, lambda a, k: "distillation heads") for head in model.distillation.heads),
        (model.instap.vision_model, vision_name),
        (model.instap.attention_pool, lambda a, k: "attention pool"),
        (model.instap.text_model, text_name),
        (model.mlm_head, lambda a, k: "MLM head"),
    ):
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, namer=namer: begin(namer(a, k)), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, k, o: end(), with_kwargs=True))
    originals = {name: getattr(modeling, name) for name in COMPONENT_LOSSES if hasattr(modeling, name)}

    def wrapped(function, name="loss functions"):
        def call(*args, **kwargs):
            begin(name)
            try:
                return function(*args, **kwargs)
            finally:
                end()
        return call

    for name, function in originals.items():
        setattr(modeling, name, wrapped(function))
    # The teacher runs its blocks itself (the last one only where the student looks): time its two methods.
    for method in ("teacher_blocks", "teacher_targets"):
        setattr(model.distillation, method, wrapped(getattr(model.distillation, method), "teacher"))
    # The Trainer's default optimizer with torch >= 2.8 ("adamw_torch_fused").
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    try:
        for step in range(steps + 1):
            current.clear()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            synchronize(device)
            start = time.perf_counter()
            loss = model(**batch).loss
            synchronize(device)
            forward = time.perf_counter() - start
            start = time.perf_counter()
            loss.backward()
            synchronize(device)
            backward = time.perf_counter() - start
            start = time.perf_counter()
            optimizer.step()
            synchronize(device)
            current["optimizer (AdamW)"] = time.perf_counter() - start
            current["backward (all)"] = backward
            parts = sum(value for key, value in current.items() if key not in ("start", "backward (all)", "optimizer (AdamW)"))
            current["forward, other (projections, gathers, masking)"] = forward - parts
            if step > 0:  # the first is warm-up
                for key, value in current.items():
                    if key != "start":
                        timings.setdefault(key, []).append(value)
    finally:
        for handle in handles:
            handle.remove()
        for name, function in originals.items():
            setattr(modeling, name, function)
        for method in ("teacher_blocks", "teacher_targets"):
            delattr(model.distillation, method)
    return {key: statistics.median(values) for key, values in timings.items()}


def bench(setup: Setup, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = InstAPForPreTraining(setup.config).to(device).train()
    batches = {flag: make_batch(setup, device, flag) for flag in (True, False)}
    variants = [
        Variant(0.0, False, True),  # baseline
        Variant(0.0, True, True),
        Variant(0.8, False, True),
        Variant(0.8, True, True),
        Variant(0.0, False, False),
        Variant(0.8, False, False),
    ]
    times = {v: [] for v in variants}
    for v in variants:  # warm-up (kernel selection, allocator growth)
        configure(model, v)
        for i in range(args.warmup):
            run_step(model, batches[v.instances], seed=i)
    steps = args.steps or setup.default_steps
    for step in range(steps):  # interleaved, so that load changes hit every variant alike
        for v in variants:
            configure(model, v)
            times[v].append(timed_step(model, batches[v.instances], device, seed=step))
    memory = {}
    if not args.no_memory:
        for v in variants:
            configure(model, v)
            if device.type == "cuda":
                memory[v] = cuda_peak_bytes(model, batches[v.instances], device, seed=0)
            else:
                memory[v] = cpu_peak_bytes(model, batches[v.instances], seed=0)
    configure(model, variants[0])
    encoder = {ratio: encoder_only_time(model, batches[True], device, ratio, steps) for ratio in (0.0, 0.8)}
    configure(model, Variant(0.8, False, True))
    profiles = {flag: component_profile(model, batches[flag], device, max(5, steps)) for flag in (True, False)}
    return {
        "profiles": profiles,
        "setup": setup,
        "variants": variants,
        "time": {v: min(t) for v, t in times.items()},
        "memory": memory,
        "encoder": encoder,
        "parameters": model.num_parameters(only_trainable=True),
    }


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def tokens(setup: Setup) -> str:
    v = setup.config.vision_config
    per_frame = (v.image_size // v.patch_size) ** 2
    b, n = setup.batch_size, setup.batch_size * setup.instances_per_sample
    return f"B={b} scenes + N={n} crops, {setup.num_frames} frames x {per_frame} patches at {v.image_size}px"


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def report(results: list[dict], device: torch.device, memory_label: str, load_before: str) -> str:
    lines = [
        f"device: {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}; load average (1/5/15 min) before {load_before}, "
        f"after {load_average()}",
        f"memory: {memory_label}",
        "",
        "| config | mask rho | grad ckpt | instances | step ms (best) | time / base | peak MB | mem / base |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for result in results:
        setup, variants, times, memory = result["setup"], result["variants"], result["time"], result["memory"]
        base = variants[0]
        for v in variants:
            mem = f"{memory[v] / 2**20:.1f}" if v in memory else "-"
            mem_ratio = f"{memory[v] / memory[base]:.2f}" if v in memory and memory[base] else "-"
            lines.append(
                f"| {setup.name} | {v.ratio:g} | {'on' if v.checkpointing else 'off'} | "
                f"{'yes' if v.instances else 'no'} | {times[v] * 1e3:.1f} | {times[v] / times[base]:.2f} | "
                f"{mem} | {mem_ratio} |"
            )
        with_inst = {r: times[Variant(r, False, True)] for r in (0.0, 0.8)}
        without = {r: times[Variant(r, False, False)] for r in (0.0, 0.8)}
        share = {r: (with_inst[r] - without[r]) / with_inst[r] for r in (0.0, 0.8)}
        step_ratio = times[Variant(0.8, False, True)] / times[base]
        encoder_ratio = result["encoder"][0.8] / result["encoder"][0.0]
        verdict = "under half: yes" if step_ratio < 0.5 else "under half: NO"
        notes.append(
            f"- {setup.name} ({tokens(setup)}; {result['parameters'] / 1e6:.2f}M trainable): instance branch = "
            f"{share[0.8]:.0%} of the step at rho=0.8, {share[0.0]:.0%} at rho=0. Visible-only encoding at rho=0.8 "
            f"should cost well under half of the unmasked step: whole step {step_ratio:.2f}x ({verdict}); "
            f"student encoder alone (scenes + crops, fwd+bwd) {encoder_ratio:.2f}x. The frozen teacher (unmasked, "
            f"forward only), the text/fusion passes and the MLM heads do not shrink with rho."
        )
    profiles = []
    for result in results:
        with_instances, global_step = result["profiles"][True], result["profiles"][False]
        totals = {flag: sum(profile.values()) for flag, profile in result["profiles"].items()}
        profiles += [
            "", f"Per-component profile, {result['setup'].name}, rho 0.8 (medians of the steps; step with instances "
            f"{totals[True] * 1e3:.1f} ms, global step {totals[False] * 1e3:.1f} ms, ratio "
            f"{totals[True] / totals[False]:.2f}x):", "",
            "| part | with instances, ms | share | global step, ms | share |", "|---|---:|---:|---:|---:|",
        ]
        for name, seconds in sorted(with_instances.items(), key=lambda item: -item[1]):
            other = global_step.get(name)
            other_cells = f"{other * 1e3:.1f} | {other / totals[False]:.0%}" if other is not None else "- | -"
            profiles.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / totals[True]:.0%} | {other_cells} |")
    return "\n".join(lines + [""] + notes + profiles)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"],
                        help="tiny, small and/or umt (the dimensions of UMT's comparison: batch 8, 4 crops each)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant, best reported (default: tiny 10, small 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--batch-size", type=int, default=4, help="scene clips per step")
    parser.add_argument("--instances-per-sample", type=int, default=2, help="crops per scene")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: tiny 4, small 8)")
    parser.add_argument("--small-depth", type=int, default=6, help="blocks of the small ViT / BERT / teacher")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads; default 1 on CPU (stable ratios on a shared machine), torch's default on CUDA",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.no_memory:
        memory_label = "not measured (--no-memory)"
    elif device.type == "cuda":
        memory_label = "torch.cuda.max_memory_allocated during the step minus the allocation at its start"
    else:
        memory_label = (
            "CPU tensor memory: peak live bytes of the CPU allocator during one fwd+bwd step above its start level, "
            "from torch.profiler allocation events (profile_memory=True); excludes allocator caching and Python objects"
        )
    started, load_before = time.perf_counter(), load_average()
    results = []
    for setup in make_setups(args):
        print(f"[bench] {setup.name}: {tokens(setup)} ...", file=sys.stderr, flush=True)
        results.append(bench(setup, args, device))
    print(report(results, device, memory_label, load_before))
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
