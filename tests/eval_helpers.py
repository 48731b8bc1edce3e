"""Shared builders for the evaluation tests (`tests/test_eval_*.py`): a tiny InstAP saved with its processor, a tiny
synthetic InstVL, and a tiny benchmark annotation file with real encoded media. Not a test module."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from media_utils import write_image, write_video

NUM_FRAMES = 2


def make_synthetic_instvl(root: str, num_train: int = 8, num_test: int = 8) -> str:
    from instap_train.demo_data import ensure_synthetic_instvl

    return ensure_synthetic_instvl(os.path.join(root, "instvl"), num_train=num_train, num_test=num_test)


def make_tiny_checkpoint(root: str, synthetic_dir: str, model_class=None, seed: int = 0, **config_overrides) -> str:
    """A random tiny InstAP (`InstAPForPreTraining` by default) and its processor, saved to `root/model`.

    The tokenizer's vocabulary is the synthetic training captions' words (`build_caption_tokenizer`).
    """
    from instap_processing.instvl import load_instvl
    from instap_train.demo_data import build_caption_tokenizer
    from instap_train.factory import ModelArguments, build_config, build_processor
    from modeling_instap import InstAPForPreTraining

    records = load_instvl(synthetic_dir, "train", streaming=False)
    tokenizer = build_caption_tokenizer(records, os.path.join(root, "tokenizer"))
    overrides = ",".join(f"{key}={value}" for key, value in config_overrides.items()) or None
    config = build_config(ModelArguments(preset="tiny", config_overrides=overrides), tokenizer)
    torch.manual_seed(seed)
    model = (model_class or InstAPForPreTraining)(config)
    processor = build_processor(config, tokenizer, num_frames=NUM_FRAMES, max_length=32)
    out = os.path.join(root, "model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_benchmark(root: str, num_videos: int = 5, with_image: bool = True) -> tuple[str, str, list[dict]]:
    """Random-noise MP4s (odd videos get two captions) and, after them, one JPEG; returns (json, media_root, entries).

    The image comes last in the file so that loading must reorder it (images are batched first).
    """
    media_root = os.path.join(root, "media")
    os.makedirs(os.path.join(media_root, "clips"), exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for index in range(num_videos):
        frames = rng.integers(0, 256, (5 + index, 40, 48, 3), dtype=np.uint8)
        write_video(frames, os.path.join(media_root, "clips", f"{index}.mp4"))
        caption = [f"a red square number {index}", "a blue circle moving left"] if index % 2 else f"a green triangle {index}"
        entries.append({"video": f"clips/{index}.mp4", "caption": caption})
    if with_image:
        write_image(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8), os.path.join(media_root, "clips", "still.jpg"))
        entries.append({"video": "clips/still.jpg", "caption": "a white square"})
    path = os.path.join(root, "benchmark.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(entries, handle)
    return path, media_root, entries
