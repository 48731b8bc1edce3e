#!/usr/bin/env python
"""The paper's ablations (METHOD §8, Tables 4 and 5) at small scale, on the synthetic InstVL and the CPU, over seeds.

Table 4: two tiny models from the same initialisation and the same data order (per seed), trained with the demo's
recipe for the same steps:

  (a) L_rec + L_global            (`lambda_inst=0`: the instance branch is not run)
  (b) L_rec + L_global + L_inst   (InstAP, the demo)

then global and instance retrieval (mean recall, dual encoder) on the test splits. As in the paper, the global-only
model (a) scores instance crops alone; InstAP (b) through the attention pool with their scene. Each cell is the mean
± standard deviation over the seeds; the difference is taken per seed (paired), then averaged.

Table 5 (`--table 5`): the paper's cumulative rows for instance retrieval, each adding one choice to the row above:
baseline (one τ for both contrastive losses, λ_inst = 1, whole captions, one box per video instance) → + instance
temperature → + the demo's λ_inst → + caption sub-sampling → + box trajectories (= (b) of Table 4).

    python benchmarks/ablation_synthetic.py                          # Table 4, seeds 0 1 2 (~35 min on 2 cores)
    python benchmarks/ablation_synthetic.py --table 5 --seeds 0 --steps 300
    python benchmarks/ablation_synthetic.py --compare crop_mask_ratio=0.8 crop_size=32   # what a speed knob costs
"""

import argparse
import json
import os
import statistics
import time

from instap_train.factory import DataArguments, resolve_dataset
from instap_train.run_align import evaluate_splits
from instap_train.run_align import main as run_align
from modeling_instap import InstAPForPreTraining

# name -> (config overrides, script flags); every run also takes the demo's defaults (run_align.DEMO_ARGUMENTS).
TABLE4 = {
    "(a) L_rec + L_global": ("lambda_inst=0", []),
    "(b) + L_inst (InstAP)": (None, []),
}
_WHOLE_CAPTIONS_ONE_BOX = ["--full_caption", "True", "--box_trajectories", "False"]
TABLE5 = {
    "baseline": ("separate_instance_temperature=False,lambda_inst=1.0", _WHOLE_CAPTIONS_ONE_BOX),
    "+ instance temperature": ("lambda_inst=1.0", _WHOLE_CAPTIONS_ONE_BOX),
    "+ demo lambda_inst": (None, _WHOLE_CAPTIONS_ONE_BOX),
    "+ caption sub-sampling": (None, ["--box_trajectories", "False"]),
    "+ box trajectories (InstAP)": (None, []),
}


def train_variant(name: str, overrides: str | None, flags: list[str], seed: int, args) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    output_dir = os.path.join(args.output_dir, f"{slug}-seed{seed}")
    if args.reuse_trained and os.path.isfile(os.path.join(output_dir, "config.json")):
        print(f"{output_dir}: reusing the model trained there (--reuse_trained)")
        return output_dir
    argv = [
        "--output_dir", output_dir, "--max_steps", str(args.steps), "--seed", str(seed), "--data_seed", str(seed),
        "--eval_splits", "", "--report_to", "none", "--synthetic_dir", args.synthetic_dir,
        "--synthetic_num_train", str(args.num_train), "--synthetic_num_test", str(args.num_test), *flags,
    ]
    if overrides:
        argv += ["--config_overrides", overrides]
    run_align(argv)
    return output_dir


def evaluate_variant(output_dir: str, use_attention_pool: bool, args) -> tuple[dict[str, float], dict[str, float]]:
    from instap_processing import InstAPProcessor

    model = InstAPForPreTraining.from_pretrained(output_dir).eval()
    processor = InstAPProcessor.from_pretrained(output_dir)
    data_args = DataArguments(
        synthetic_dir=args.synthetic_dir, synthetic_num_train=args.num_train, synthetic_num_test=args.num_test,
        eval_splits=args.splits, rerank_k=16,
    )
    evaluations = evaluate_splits(
        model, processor, resolve_dataset(data_args), data_args, processor.video_processor.num_frames, 32,
        instance_attention_pool=use_attention_pool,
    )
    rows, chance = {}, {}
    for split, evaluation in evaluations.items():
        for part in ("global", "instance"):
            if part in evaluation:
                rows[f"{split} {part}"] = evaluation[part]["dual_encoder"]["r_mean"]
                chance[f"{split} {part}"] = evaluation[part]["chance_r_mean"]
    return rows, chance


def run_table(variants: dict, args) -> tuple[dict[str, dict[str, list[float]]], dict[str, float], dict[str, float]]:
    """variant -> row -> one mean recall per seed; the chance of each row; seconds per variant (mean)."""
    table: dict[str, dict[str, list[float]]] = {}
    chance: dict[str, float] = {}
    seconds: dict[str, list[float]] = {}
    for name, (overrides, flags) in variants.items():
        for seed in args.seeds:
            start = time.perf_counter()
            output_dir = train_variant(name, overrides, flags, seed, args)
            # The global-only model has no trained attention pool: its crops are scored alone (METHOD §5).
            global_only = overrides is not None and "lambda_inst=0" in overrides.split(",")
            rows, row_chance = evaluate_variant(output_dir, use_attention_pool=not global_only, args=args)
            for row, value in rows.items():
                table.setdefault(name, {}).setdefault(row, []).append(value)
            chance.update(row_chance)
            seconds.setdefault(name, []).append(time.perf_counter() - start)
    return table, chance, {name: statistics.mean(values) for name, values in seconds.items()}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table4(table, chance) -> str:
    (name_a, a), (name_b, b) = table.items()
    lines = [f"| mean recall (dual encoder) | {name_a} | {name_b} | (b) − (a) per seed | chance |", "|---|---:|---:|---:|---:|"]
    for row in sorted(a):
        differences = [vb - va for va, vb in zip(a[row], b[row])]
        lines.append(f"| {row} | {mean_std(a[row])} | {mean_std(b[row])} | {mean_std(differences)} | {chance[row]:.2f} |")
    return "\n".join(lines)


def format_comparison(table, chance) -> str:
    (name_b, b), *others = table.items()
    header = " | ".join(f"{name} | − (b) per seed" for name, _ in others)
    lines = [f"| mean recall (dual encoder) | {name_b} | {header} | chance |", "|---|---:" + "|---:|---:" * len(others) + "|---:|"]
    for row in sorted(b):
        cells = []
        for _, results in others:
            differences = [vo - vb for vb, vo in zip(b[row], results[row])]
            cells.append(f"{mean_std(results[row])} | {mean_std(differences)}")
        lines.append(f"| {row} | {mean_std(b[row])} | {' | '.join(cells)} | {chance[row]:.2f} |")
    return "\n".join(lines)


def format_table5(table, chance) -> str:
    rows = sorted({row for results in table.values() for row in results if " instance" in row})
    lines = ["| instance mean recall | " + " | ".join(r.replace(" instance", "") for r in rows) + " |",
             "|---" + "|---:" * len(rows) + "|"]
    for name, results in table.items():
        lines.append(f"| {name} | " + " | ".join(mean_std(results[row]) for row in rows) + " |")
    lines.append("| chance | " + " | ".join(f"{chance[row]:.2f}" for row in rows) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", default="img_1k,img_zero_1k,video_1k")
    parser.add_argument("--table", type=int, choices=[4, 5], default=4, help="Table 4 (a) vs (b), or Table 5's rows")
    parser.add_argument("--num_train", type=int, default=512)
    parser.add_argument("--num_test", type=int, default=128)
    parser.add_argument("--synthetic_dir", default=DataArguments().synthetic_dir)
    parser.add_argument("--output_dir", default=os.path.join("outputs", "ablation"))
    parser.add_argument(
        "--compare", nargs="+", metavar="OVERRIDES",
        help="instead of a table, (b) against (b) with each of these --config_overrides (e.g. crop_mask_ratio=0.8 "
        "crop_size=32): what a speed knob costs in learning, paired per seed",
    )
    parser.add_argument(
        "--reuse_trained", action="store_true",
        help="evaluate a run folder that already holds a model instead of training it again (the folder is named by "
        "variant and seed; its recipe is not checked)",
    )
    args = parser.parse_args(argv)

    report = {"steps": args.steps, "seeds": args.seeds, "table": "compare" if args.compare else args.table}
    if args.compare:
        variants = {"(b) + L_inst (InstAP)": TABLE4["(b) + L_inst (InstAP)"]}
        variants.update({f"(b), {overrides}": (overrides, []) for overrides in args.compare})
        table, chance, seconds = run_table(variants, args)
        text = [f"\n(b) against (b) with config overrides on the synthetic InstVL: {args.steps} steps per run, seeds "
                f"{args.seeds} (mean ± std; differences paired per seed)", format_comparison(table, chance),
                "seconds per run: " + ", ".join(f"{name}: {value:.0f}" for name, value in seconds.items())]
        report.update(results=table, chance=chance)
    elif args.table == 4:
        table4, chance, seconds = run_table(TABLE4, args)
        text = [f"\nTable 4 on the synthetic InstVL: {args.steps} steps per run, seeds {args.seeds} (mean ± std)",
                format_table4(table4, chance), "(a) scores instance crops alone, (b) through the attention pool.",
                "seconds per run: " + ", ".join(f"{name}: {value:.0f}" for name, value in seconds.items())]
        report.update(results=table4, chance=chance)
    else:
        table5, chance, _ = run_table(TABLE5, args)
        text = [f"\nTable 5 (cumulative) on the synthetic InstVL: {args.steps} steps per run, seeds {args.seeds}",
                format_table5(table5, chance)]
        report.update(results=table5, chance=chance)
    print("\n".join(text))
    os.makedirs(args.output_dir, exist_ok=True)
    stem = "ablation_compare" if args.compare else f"ablation_table{args.table}"
    with open(os.path.join(args.output_dir, f"{stem}.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(args.output_dir, f"{stem}.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(text) + "\n")
    return report


if __name__ == "__main__":
    main()
