"""Do a trained tiny InstAP's activation maps point at the object a phrase names?

Trains the `tiny` InstAP with `instap_train.run_align.main` on the synthetic InstVL (or evaluates a given
checkpoint), then, on the scenes of a test image split that hold two or more objects, computes
`instap_eval.visualize.activation_map` of the phrase "a {colour} {shape}" of every object and reports, for both
map methods, against the same measures for the untrained model:

* mass ratio: `box_mass_ratio(map, box)` of the named object (activation per unit area inside its box over
  outside; 1 = indifferent). Its median, and the share of phrases with ratio > 1.
* specificity: the share of phrases whose map is denser inside the named object's box than inside every other
  object's box of the scene. A phrase-independent map (one that only finds salient objects) scores exactly
  #scenes / #phrases: that chance level is printed beside it.

The mass ratio alone is not evidence of grounding here: bright objects on a flat background draw the maps of an
untrained model too (median ratio ~1.3). Specificity above chance needs a matching head that has learnt to tell
the objects apart, i.e. a global VTM loss well below ln 2 ≈ 0.69.

    python benchmarks/bench_activation_maps.py --steps 600            # the stage-2 demo's length; ~20+ min on 2 CPU cores
    python benchmarks/bench_activation_maps.py --model outputs/instap-tiny-align --synthetic_dir ~/.cache/instap/synthetic_instvl
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time

import torch

from instap_eval.visualize import activation_map, box_mass_ratio
from instap_processing import InstAPProcessor
from instap_processing.instvl import load_instvl

_OBJECT = re.compile(r"(?:small|large) (\w+) (\w+)")


def box_density(maps: torch.Tensor, box) -> float:
    """Mean activation over the pixels whose centre lies in ``box`` (all frames)."""
    x1, y1, x2, y2 = box
    ys = torch.arange(maps.shape[-2]) + 0.5
    xs = torch.arange(maps.shape[-1]) + 0.5
    inside = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
    return maps[:, inside].mean().item() if inside.any() else float("nan")


def measure(model, processor, records, method: str) -> dict:
    ratios, specific, scenes = [], [], 0
    for record in records:
        instances = record["instances"] or []
        if len(instances) < 2:
            continue
        scenes += 1
        for index, instance in enumerate(instances):
            match = _OBJECT.search(instance["caption"])
            if match is None:
                raise ValueError(f"Unexpected synthetic caption {instance['caption']!r}")
            maps = activation_map(model, processor, record["media"], f"a {match.group(1)} {match.group(2)}",
                                  method=method)
            box = instance["boxes"][0]
            ratios.append(box_mass_ratio(maps, box))
            others = [box_density(maps, other["boxes"][0]) for j, other in enumerate(instances) if j != index]
            specific.append(box_density(maps, box) > max(others))
    return {
        "phrases": len(ratios),
        "median_ratio": statistics.median(ratios),
        "ratio_above_1": sum(ratio > 1 for ratio in ratios) / len(ratios),
        "specificity": sum(specific) / len(specific),
        "chance": scenes / len(specific),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="An InstAP checkpoint with its processor (skips training).")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--num_train", type=int, default=512)  # the demo's (a different size would rewrite its cache)
    parser.add_argument("--num_test", type=int, default=128)
    parser.add_argument("--split", default="img_1k")
    parser.add_argument("--synthetic_dir", default=None, help="Default: a temporary folder.")
    parser.add_argument("--output_dir", default=None, help="Where the trained model goes (default: temporary).")
    args = parser.parse_args(argv)

    from instap_train.demo_data import ensure_synthetic_instvl
    from instap_train.run_align import main as run_align
    from modeling_instap import InstAPForPreTraining

    work = tempfile.mkdtemp(prefix="bench_activation_maps_")
    synthetic = ensure_synthetic_instvl(args.synthetic_dir or os.path.join(work, "instvl"), num_train=args.num_train,
                                        num_test=args.num_test)
    records = load_instvl(synthetic, args.split, streaming=False)
    rows, seconds = {}, None
    if args.model:
        checkpoints = {"given checkpoint": args.model}
    else:
        output_dir = args.output_dir or os.path.join(work, "model")

        def align_args(out: str, steps: int, learning_rate: float) -> list[str]:
            return [
                "--output_dir", out, "--max_steps", str(steps), "--warmup_steps", str(max(1, steps // 20)),
                "--learning_rate", str(learning_rate), "--synthetic_dir", synthetic,
                "--synthetic_num_train", str(args.num_train), "--synthetic_num_test", str(args.num_test),
                "--per_device_train_batch_size", str(args.batch_size), "--save_strategy", "no", "--report_to", "none",
                "--dataloader_num_workers", "0", "--use_cpu", "--eval_splits", "", "--seed", "0",
                "--logging_steps", str(max(1, steps // 10)),
            ]

        # The untrained reference: one step at a zero learning rate writes the same model and its processor.
        run_align(align_args(os.path.join(work, "untrained"), 1, 0.0))
        start = time.perf_counter()
        run_align(align_args(output_dir, args.steps, args.learning_rate))
        seconds = time.perf_counter() - start
        checkpoints = {"untrained": os.path.join(work, "untrained"), f"after {args.steps} steps": output_dir}
    for name, path in checkpoints.items():
        model = InstAPForPreTraining.from_pretrained(path).eval()
        processor = InstAPProcessor.from_pretrained(path)
        for method in ("attention", "features"):
            rows[(name, method)] = measure(model, processor, records, method)

    if seconds is not None:
        print(f"\nTraining: {args.steps} steps in {seconds:.0f} s.")
    print(f"\nActivation maps on {args.split} scenes with 2+ objects, phrase 'a <colour> <shape>'\n")
    print("| model | method | phrases | median mass ratio | ratio > 1 | specificity | chance |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (name, method), row in rows.items():
        print(f"| {name} | {method} | {row['phrases']} | {row['median_ratio']:.2f} | {row['ratio_above_1']:.2f} | "
              f"{row['specificity']:.2f} | {row['chance']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
