# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""InstVL-format data from raw videos and images (the paper's §3.1.1 pipeline on transformers models).

    python -m instap_processing.annotate --input DIR --output DIR [--config annotate.yaml]

1. Shots: each video is read at `shots.frame_rate` fps and cut where colour histograms change (`shots.py`); shots
   outside a length range are dropped. Images pass through as one-frame items.
2. Detection: `GroundingDinoForObjectDetection` on each item's key frame, prompted by `detection.categories`;
   score thresholds, then class-agnostic NMS (`models.py`).
3. Tracking: `Sam2VideoModel` propagates the key-frame boxes through the shot as masks, then per-frame boxes; a track
   ends where its mask vanishes; short tracks are dropped.
4. Captions: an `AutoModelForImageTextToText` model with its chat template writes the scene caption and one caption
   per instance (its box drawn on the key frame); prompts in `prompts.yaml`.
5. Write: InstVL records as Parquet shards (media embedded), a `summary.json` and a resumable state file.

The output loads with `load_instvl(OUTPUT, split)` and trains with `run_align.py --dataset_name_or_path OUTPUT`.
"""

from .config import (
    AnnotateConfig,
    CaptionConfig,
    DetectionConfig,
    OutputConfig,
    ShotConfig,
    TrackingConfig,
    load_annotate_config,
)
from .pipeline import annotate, list_inputs
from .shots import colour_histogram, cut_into_shots, histogram_distance, video_shots

__all__ = [
    "AnnotateConfig",
    "CaptionConfig",
    "DetectionConfig",
    "OutputConfig",
    "ShotConfig",
    "TrackingConfig",
    "annotate",
    "colour_histogram",
    "cut_into_shots",
    "histogram_distance",
    "list_inputs",
    "load_annotate_config",
    "main",
    "video_shots",
]


def main(argv=None) -> dict:
    """The command line: annotate `--input` into `--output`, print the summary."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m instap_processing.annotate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="Folder of videos and images (read recursively).")
    parser.add_argument("--output", required=True, help="Output folder (data/{split}-NNNNN.parquet, summary.json).")
    parser.add_argument("--config", default=None, help="YAML or JSON config (see AnnotateConfig); default: defaults.")
    parser.add_argument("--device", default=None, help="Override the config's device (auto, cpu, cuda, cuda:1).")
    parser.add_argument("--captions_file", default=None,
                        help="JSON: item id or input path -> scene caption (bring your own captions).")
    for stage in ("detection", "tracking", "captions"):
        parser.add_argument(f"--no_{stage}", action="store_true", help=f"Skip the {stage} stage.")
    args = parser.parse_args(argv)
    overrides: dict = {}
    if args.device:
        overrides["device"] = args.device
    for stage in ("detection", "tracking", "captions"):
        if getattr(args, f"no_{stage}"):
            overrides.setdefault(stage, {})["enabled"] = False
    if args.captions_file:
        overrides.setdefault("captions", {})["captions_file"] = args.captions_file
    if not __import__("os").path.isdir(args.input):
        parser.error(f"--input {args.input!r} is not a folder")
    summary = annotate(args.input, args.output, load_annotate_config(args.config, overrides))
    print(json.dumps(summary, indent=1))
    return summary
