# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Command line for zero-shot retrieval (METHOD §5): ``python -m instap_eval`` (or ``instap-eval``).

Examples::

    # MSR-VTT 1K from a local annotation file (format: instap_eval.benchmarks)
    python -m instap_eval --model out/stage2 --data msrvtt_1k_test.json --media_root /data/msrvtt \\
        --num_frames 16 --k 128 --output msrvtt.json

    # DiDeMo / ActivityNet paragraph-to-video (captions of a video joined, 64 tokens)
    python -m instap_eval --model out/stage2 --data didemo_test.json --media_root /data/didemo --paragraph

    # InstVL splits (folder, Hub id or InstVL JSON): global and instance retrieval
    python -m instap_eval --model out/stage2 --data org/instvl --split img_1k,img_zero_1k,video_1k

The model folder (or Hub id) holds an `InstAPModel` or `InstAPForPreTraining` checkpoint and its
`InstAPProcessor` (``run_align.py`` saves both). The table has one row per evaluation: dual encoder and
matching-head re-ranked (top ``--k``), with T2V/V2T R@1/5/10, each direction's mean and the mean recall.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .zero_shot import RERANK_SCORES, describe_rerank

__all__ = ["build_parser", "load_model_and_processor", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instap-eval",
        description="Zero-shot video-text retrieval of an InstAP checkpoint (dual encoder and re-ranked).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="InstAPModel/InstAPForPreTraining folder or Hub id (with its processor).")
    parser.add_argument(
        "--data", required=True,
        help="A benchmark annotation file (.json/.jsonl list of {video, caption}), or InstVL data: a folder, Hub "
             "dataset id or InstVL JSON(L) file.",
    )
    parser.add_argument("--media_root", default=None, help="Root of relative media paths (default: the file's folder).")
    parser.add_argument("--split", default=None,
                        help="InstVL split(s), comma-separated (e.g. img_1k,video_1k). Ignored for benchmark files.")
    parser.add_argument("--format", choices=("auto", "benchmark", "instvl"), default="auto",
                        help="How to read --data; 'auto' looks at the first record of a JSON file.")
    parser.add_argument("--name", default=None, help="Name of the evaluation in the table (default: from --data).")
    parser.add_argument("--paragraph", action="store_true",
                        help="Paragraph-to-video (DiDeMo, ActivityNet): join each video's captions, 64 tokens.")
    parser.add_argument("--max_text_length", type=int, default=None,
                        help="Text tokens (default: 64 with --paragraph, else the processor's max_length).")
    parser.add_argument("--num_frames", type=int, default=None, help="Frames per video (default: the processor's).")
    parser.add_argument("--k", type=int, default=128, help="Candidates re-ranked by the matching head per query.")
    parser.add_argument("--no_rerank", action="store_true", help="Dual-encoder scores only.")
    parser.add_argument("--rerank_score", choices=RERANK_SCORES, default="positive_logit",
                        help="Re-ranked score of a pair: the matching head's positive logit (METHOD §5, UMT) or 'fused', "
                        "the dual encoder's and the matching head's log probabilities added.")
    parser.add_argument("--no_instance", action="store_true", help="InstVL: skip instance retrieval.")
    parser.add_argument("--no_attention_pool", action="store_true",
                        help="InstVL instance retrieval: score crops alone (as global-only models such as UMT).")
    parser.add_argument("--batch_size", type=int, default=32, help="Videos per encoder batch.")
    parser.add_argument("--fusion_batch_size", type=int, default=256, help="Pairs per matching-head batch.")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers decoding the media.")
    parser.add_argument("--cache_gb", type=float, default=2.0,
                        help="Decoded frames kept in memory between the two passes; the rest is decoded again.")
    parser.add_argument("--max_samples", type=int, default=None, help="InstVL: evaluate the first N samples only.")
    parser.add_argument("--skip_missing", action="store_true",
                        help="Benchmark files: drop videos whose file is missing instead of failing.")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    return parser


def load_model_and_processor(model_name_or_path: str, device: str | None = None, dtype: str = "float32"):
    """The `InstAPModel` backbone (also from an `InstAPForPreTraining` checkpoint) and the saved `InstAPProcessor`."""
    import modeling_instap  # noqa: F401  (registers the Auto classes)
    from instap_processing import InstAPProcessor
    from modeling_instap import InstAPModel

    model = InstAPModel.from_pretrained(model_name_or_path, dtype=getattr(torch, dtype))
    processor = InstAPProcessor.from_pretrained(model_name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _data_format(data: str, requested: str) -> str:
    from .benchmarks import is_benchmark_file

    if requested != "auto":
        return requested
    return "benchmark" if is_benchmark_file(data) else "instvl"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .benchmarks import (
        evaluate_benchmark,
        evaluate_instvl_split,
        format_results_table,
        load_benchmark_json,
    )

    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    data_format = _data_format(args.data, args.format)
    cache_bytes = int(args.cache_gb * (1 << 30))
    common = dict(
        num_frames=args.num_frames, k=args.k, rerank=not args.no_rerank, batch_size=args.batch_size,
        num_workers=args.num_workers, cache_bytes=cache_bytes, fusion_batch_size=args.fusion_batch_size,
        rerank_score=args.rerank_score,
    )
    evaluations: dict[str, Any] = {}
    if data_format == "benchmark":
        name = args.name or os.path.splitext(os.path.basename(args.data))[0]
        benchmark = load_benchmark_json(
            args.data, args.media_root, paragraph=args.paragraph, skip_missing=args.skip_missing
        )
        evaluations[name] = evaluate_benchmark(
            model, processor, benchmark, max_text_length=args.max_text_length, **common
        )
    else:
        if not args.split:
            raise SystemExit("--split is needed for InstVL data (e.g. --split img_1k,video_1k).")
        if args.paragraph or args.max_text_length:
            raise SystemExit("--paragraph/--max_text_length apply to benchmark files; InstVL uses the processor's length.")
        for split in filter(None, (part.strip() for part in args.split.split(","))):
            name = f"{args.name} {split}" if args.name else split
            evaluations[name] = evaluate_instvl_split(
                model, processor, args.data, split, media_root=args.media_root, instances=not args.no_instance,
                use_attention_pool=not args.no_attention_pool, max_samples=args.max_samples, **common,
            )

    table = format_results_table(evaluations)
    print(table)
    if not args.no_rerank:
        print(describe_rerank(args.rerank_score, args.k))
    output = {
        "model": args.model,
        "data": args.data,
        "format": data_format,
        "settings": {key: value for key, value in vars(args).items() if key not in ("model", "data", "output")},
        "results": evaluations,
        "table": table,
    }
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(output, handle, indent=2)
        print(f"\nWrote {args.output}")
    return output


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv`` (default: ``sys.argv[1:]``), evaluates, prints the table, returns (and writes) the results."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    main()
