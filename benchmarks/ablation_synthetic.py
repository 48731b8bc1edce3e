#!/usr/bin/env python
"""The paper's ablation (METHOD §8, Table 4) at small scale, on the synthetic InstVL and the CPU.

Two tiny models from the same initialisation and the same data order, trained for the same steps:

  (a) L_rec + L_global            (`lambda_inst=0`: the instance branch is not run)
  (b) L_rec + L_global + L_inst   (InstAP)

then global and instance retrieval (mean recall, dual encoder) on the test splits. As in the paper, the
global-only model (a) scores instance crops alone; InstAP (b) scores them through the attention pool with their
scene. Prints a table shaped like Table 4 and writes it as JSON.

    python benchmarks/ablation_synthetic.py                 # ~10 minutes on 2 CPU cores
    python benchmarks/ablation_synthetic.py --steps 300 --splits video_1k
"""

import argparse
import json
import os
import time

from instap_train.factory import DataArguments, resolve_dataset
from instap_train.run_align import DEMO_ARGUMENTS, evaluate_splits
from instap_train.run_align import main as run_align
from modeling_instap import InstAPForPreTraining

VARIANTS = {
    "(a) L_rec + L_global": "lambda_inst=0",
    "(b) + L_inst (InstAP)": None,
}


def chance_mean_recall(num_items: int) -> float:
    """Mean of R@1/5/10 (percent) of a random ranking over `num_items` candidates."""
    return 100.0 * sum(min(k, num_items) for k in (1, 5, 10)) / 3 / num_items


def train_variant(name: str, overrides: str | None, args) -> str:
    output_dir = os.path.join(args.output_dir, name.split()[0].strip("()"))
    config_overrides = ",".join(filter(None, [DEMO_ARGUMENTS["config_overrides"], overrides]))
    argv = [
        "--output_dir", output_dir, "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--weight_decay", "0.02", "--adam_beta2", "0.98",
        "--warmup_steps", str(max(1, args.steps // 20)), "--lr_scheduler_type", "cosine_with_min_lr",
        "--lr_scheduler_kwargs", json.dumps({"min_lr_rate": 0.01}), "--logging_steps", str(max(1, args.steps // 6)),
        "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", str(args.num_workers),
        "--seed", str(args.seed), "--data_seed", str(args.seed), "--config_overrides", config_overrides,
        "--eval_splits", "", "--synthetic_dir", args.synthetic_dir,
        "--synthetic_num_train", str(args.num_train), "--synthetic_num_test", str(args.num_test),
    ]
    run_align(argv)
    return output_dir


def evaluate_variant(output_dir: str, use_attention_pool: bool, args) -> dict[str, float]:
    from instap_processing import InstAPProcessor

    model = InstAPForPreTraining.from_pretrained(output_dir).eval()
    processor = InstAPProcessor.from_pretrained(output_dir)
    data_args = DataArguments(
        synthetic_dir=args.synthetic_dir, synthetic_num_train=args.num_train, synthetic_num_test=args.num_test,
        eval_splits=args.splits, rerank_k=16,
    )
    results = evaluate_splits(
        model, processor, resolve_dataset(data_args), data_args, processor.video_processor.num_frames, 32,
        instance_attention_pool=use_attention_pool,
    )
    return {name: metrics["r_mean"] for name, metrics in results.items() if name.endswith("dual encoder")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--splits", default="img_zero_1k,video_1k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--num_train", type=int, default=512)
    parser.add_argument("--num_test", type=int, default=128)
    parser.add_argument("--synthetic_dir", default=DataArguments().synthetic_dir)
    parser.add_argument("--output_dir", default=os.path.join("outputs", "ablation"))
    args = parser.parse_args(argv)

    table: dict[str, dict[str, float]] = {}
    timings = {}
    for name, overrides in VARIANTS.items():
        start = time.perf_counter()
        output_dir = train_variant(name, overrides, args)
        # The global-only model has no trained attention pool: its crops are scored alone (METHOD §5).
        table[name] = evaluate_variant(output_dir, use_attention_pool=overrides is None, args=args)
        timings[name] = time.perf_counter() - start
    rows = sorted({row for results in table.values() for row in results})
    (name_a, results_a), (name_b, results_b) = table.items()
    lines = [
        f"| mean recall (dual encoder) | {name_a} | {name_b} | difference |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        label = row.replace(", dual encoder", "")
        difference = results_b[row] - results_a[row]
        lines.append(f"| {label} | {results_a[row]:.2f} | {results_b[row]:.2f} | {difference:+.2f} |")
    print(f"\nAblation on the synthetic InstVL: {args.steps} steps, batch {args.batch_size}, seed {args.seed}")
    print("\n".join(lines))
    print("(a) scores instance crops alone, (b) through the attention pool with their scene.")
    print("seconds per variant: " + ", ".join(f"{name}: {seconds:.0f}" for name, seconds in timings.items()))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "ablation.json"), "w", encoding="utf-8") as handle:
        json.dump({"steps": args.steps, "seed": args.seed, "results": table}, handle, indent=2)
    return table


if __name__ == "__main__":
    main()
