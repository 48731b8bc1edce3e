"""Argument dataclasses and builders shared by `run_pretrain.py` and `run_align.py`.

Everything here is a thin layer over the library: `modeling_instap` builds and loads models, `instap_processing`
decodes and collates, `instap_eval` scores. The scripts parse arguments, call these builders and hand the results
to a Trainer.
"""

import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import logging

from instap_processing import InstAPProcessor, InstAPVideoProcessor
from instap_processing.collator import InstAPDataCollator
from instap_processing.instvl import load_instvl
from instap_processing.streaming import InstVLIterableDataset, InstVLMapDataset
from modeling_instap import InstAPConfig

from .demo_data import DEFAULT_CACHE, build_caption_tokenizer, ensure_synthetic_instvl

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to train and how to initialise it."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An InstAP checkpoint (folder or Hub id) to continue from."}
    )
    stage1_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Stage 2 only: a stage-1 (InstAPForMaskedVideoModeling) checkpoint whose video encoder, "
                  "student heads and teacher initialise the model."},
    )
    preset: str = field(default="tiny", metadata={"help": "Config preset when no checkpoint is given: tiny, instap-b, instap-l."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config fields, e.g. 'lambda_inst=0.1,vision_config.image_size=64'."},
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A BertForMaskedLM folder or Hub id for the text/fusion encoder and MLM head."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A CLIP vision folder or Hub id for the frozen teacher."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "BERT tokenizer (folder or Hub id). Default: the checkpoint's, else a vocabulary built from "
                  "the training captions (the synthetic demo)."},
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the encoders' projections only."})
    lora_r: int = 8
    lora_alpha: int = 16


@dataclass
class DataArguments:
    """Where the InstVL data comes from and how clips are sampled."""

    dataset_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, local folder (Parquet/WebDataset/JSONL shards) or JSON(L) annotation file "
                  "in the InstVL schema. Default: the synthetic InstVL, generated on first use."},
    )
    media_root: str | None = field(default=None, metadata={"help": "Root of relative media paths."})
    train_split: str = "train"
    eval_splits: str = field(default="video_1k,img_1k", metadata={"help": "Comma-separated evaluation splits."})
    streaming: bool = field(default=False, metadata={"help": "Stream the training split (needs --max_steps)."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames per clip (default: the config's)."})
    max_text_length: int = 32
    max_eval_samples: int | None = None
    rerank_k: int = field(default=128, metadata={"help": "Candidates re-ranked by the matching head per query."})
    synthetic_dir: str = field(default=os.path.join(DEFAULT_CACHE, "synthetic_instvl"))
    synthetic_num_train: int = 512
    synthetic_num_test: int = 128
    max_bad_samples: int = 1000
    max_bad_fraction: float = 0.1


def parse_script_arguments(
    argv: list[str] | None, demo_arguments: dict
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse a run script's arguments (`demo_arguments` when there are none, or one JSON file) and set up the run.

    Decoding and collating happen in the collator, so Trainer must pass every column through
    (`remove_unused_columns=False`) and each rank reads its own data instead of rank 0 decoding and broadcasting
    every batch (`dispatch_batches=False`).
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if not argv:
        fields = {name for dc in parser.dataclass_types for name in dc.__dataclass_fields__}
        demo = {key: value for key, value in demo_arguments.items() if key in fields and value is not None}
        model_args, data_args, training_args = parser.parse_dict(demo)
    elif len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.remove_unused_columns = False
    training_args.accelerator_config.dispatch_batches = False
    set_seed(training_args.seed)
    if not torch.cuda.is_available():
        # On CPU the DataLoader workers need cores too; with more intra-op threads than free cores, small ops
        # spin-wait on each other (measured: a tiny step went from 0.22 s to 1.5-13 s on 2 cores with 2 workers).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - training_args.dataloader_num_workers))
    return model_args, data_args, training_args


def parse_overrides(text: str | None) -> dict:
    """`"a=1,b=x,c=true"` -> `{"a": 1, "b": "x", "c": True}` (ints, floats and booleans are recognised)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form name=value.")
        name, value = (piece.strip() for piece in item.split("=", 1))
        lowered = value.lower()
        if lowered in ("true", "false"):
            overrides[name] = lowered == "true"
            continue
        for cast in (int, float):
            try:
                overrides[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[name] = value
    return overrides


def resolve_dataset(data_args: DataArguments) -> str:
    """The data set to read: the given one, or the synthetic InstVL (written on first use)."""
    if data_args.dataset_name_or_path:
        return data_args.dataset_name_or_path
    return ensure_synthetic_instvl(
        data_args.synthetic_dir, num_train=data_args.synthetic_num_train, num_test=data_args.synthetic_num_test
    )


def build_tokenizer(model_args: ModelArguments, dataset: str, data_args: DataArguments, output_dir: str):
    if model_args.tokenizer_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    if model_args.model_name_or_path and os.path.exists(os.path.join(model_args.model_name_or_path, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    records = load_instvl(dataset, data_args.train_split, media_root=data_args.media_root, streaming=False)
    return build_caption_tokenizer(records, os.path.join(output_dir, "tokenizer"))


def build_config(model_args: ModelArguments, tokenizer=None) -> InstAPConfig:
    """A config from the preset and overrides (`sub_config.field=value` reaches a sub-config); the text ids follow
    the tokenizer."""
    fields = InstAPConfig.preset_fields(model_args.preset)
    for name, value in parse_overrides(model_args.config_overrides).items():
        *parents, leaf = name.split(".")
        target = fields
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                raise ValueError(f"config override {name!r}: {parent!r} is not a sub-config.")
            target = target[parent]
        target[leaf] = value
    fields.setdefault("text_config", {})
    if tokenizer is not None:
        fields["text_config"].update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            mask_token_id=tokenizer.mask_token_id,
        )
    return InstAPConfig(**fields)


def build_processor(config: InstAPConfig, tokenizer, num_frames: int, max_length: int) -> InstAPProcessor:
    vision = config.vision_config
    video_processor = InstAPVideoProcessor(
        size={"height": vision.image_size, "width": vision.image_size},
        num_frames=num_frames,
        patch_size=vision.patch_size,
        instance_crop_size={"height": config.crop_size, "width": config.crop_size},
    )
    return InstAPProcessor(video_processor=video_processor, tokenizer=tokenizer, max_length=max_length)


def build_train_dataset(dataset: str, data_args: DataArguments, num_frames: int, batch_size: int, seed: int,
                        max_instances_per_sample: int | None, stage: int):
    """Decoding happens in the DataLoader workers (`InstVLMapDataset.__getitem__` / the iterable's `__iter__`)."""
    common = dict(
        num_frames=num_frames,
        training=True,
        seed=seed,
        max_instances_per_sample=max_instances_per_sample,
        require_caption=stage == 2,
        load_instances=stage == 2,
        max_bad_samples=data_args.max_bad_samples,
        max_bad_fraction=data_args.max_bad_fraction,
    )
    records = load_instvl(dataset, data_args.train_split, media_root=data_args.media_root, streaming=data_args.streaming)
    if data_args.streaming:
        # accelerate shards the stream across ranks (dispatch_batches=False); never split_dataset_by_node as well.
        return InstVLIterableDataset(records, batch_size=batch_size, **common)
    return InstVLMapDataset(records, **common)


def build_eval_dataset(dataset: str, split: str, data_args: DataArguments, num_frames: int) -> InstVLMapDataset:
    records = load_instvl(dataset, split, media_root=data_args.media_root, streaming=False)
    if data_args.max_eval_samples is not None:
        records = records.select(range(min(len(records), data_args.max_eval_samples)))
    return InstVLMapDataset(records, num_frames=num_frames, training=False, max_instances_per_sample=None)


def collate_eval_batches(dataset: InstVLMapDataset, processor: InstAPProcessor, batch_size: int, num_workers: int = 0):
    """Decode an evaluation split once into model batches (whole captions, all instances, no augmentation)."""
    collator = InstAPDataCollator(processor, text=True, instances=True, training=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers
    )
    return list(loader)


__all__ = [
    "DataArguments",
    "ModelArguments",
    "build_config",
    "build_eval_dataset",
    "build_processor",
    "build_tokenizer",
    "build_train_dataset",
    "collate_eval_batches",
    "parse_overrides",
    "parse_script_arguments",
    "resolve_dataset",
]
