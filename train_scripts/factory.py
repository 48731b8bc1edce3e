"""Argument dataclasses and builders shared by `run_pretrain.py` and `run_align.py`.

Everything here is a thin layer over the library: `modeling_instap` builds and loads models, `instap_processing`
decodes and collates, `instap_eval` scores. The scripts parse arguments, call these builders and hand the results
to a Trainer.
"""

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import logging

from instap_eval.zero_shot import RERANK_SCORES, check_rerank_score
from instap_processing import InstAPProcessor, InstAPVideoProcessor
from instap_processing.decoding import DECODE_THREAD_TYPES
from instap_processing.instvl import load_instvl
from instap_processing.streaming import InstVLExampleOptions, InstVLIterableDataset, InstVLMapDataset
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
    compile_teacher: bool = field(
        default=False,
        metadata={"help": "torch.compile the frozen teacher (0.91x the time of a stage-2 step on CPU at UMT's dimensions, "
                  "about 30 s of compilation at the first batch; numerics equal to float tolerance)."},
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
    random_resized_crop_scale: list[float] = field(
        default_factory=lambda: [0.5, 1.0],
        metadata={"help": "Area range of the training random resized crop (METHOD §4.4: 0.5 1)."},
    )
    full_caption: bool = field(
        default=False, metadata={"help": "Train on whole captions (no caption sub-sampling, METHOD §4.4 off)."}
    )
    box_trajectories: bool = field(
        default=True, metadata={"help": "Crop video instances along their box trajectories (False: first box only)."}
    )
    max_eval_samples: int | None = None
    rerank_k: int = field(default=128, metadata={"help": "Candidates re-ranked by the matching head per query."})
    rerank_score: str = field(
        default="positive_logit",
        metadata={"help": "Re-ranked score of a pair: 'positive_logit' (method §5, UMT) or 'fused' (the dual "
                  "encoder's and the matching head's log probabilities added).", "choices": list(RERANK_SCORES)},
    )
    synthetic_dir: str = field(default=os.path.join(DEFAULT_CACHE, "synthetic_instvl"))
    synthetic_num_train: int = 512
    synthetic_num_test: int = 128
    max_bad_samples: int = 1000
    max_bad_fraction: float = field(
        default=0.1,
        metadata={"help": "Stop when more than this share of the samples read were bad (over every DataLoader worker "
                  "and the whole run), once min_samples_for_bad_fraction were read."},
    )
    min_samples_for_bad_fraction: int = 50
    torch_num_threads: int | None = field(
        default=None,
        metadata={"help": "Intra-op threads of this process (torch.set_num_threads). Default: torch's own. On a small "
                  "CPU machine leave cores to the DataLoader workers (the demo: 1 thread beside 2 workers)."},
    )

    decode_threads: int = field(
        default=1,
        metadata={"help": "FFmpeg threads per decoded clip (0: one per core). Keep 1 when DataLoader workers already "
                  "use the cores; more for long, high-resolution videos with few workers."},
    )
    decode_thread_type: str = field(
        default="FRAME",
        metadata={"help": "How FFmpeg uses decode_threads > 1 (PyAV thread_type): FRAME, SLICE or AUTO.",
                  "choices": list(DECODE_THREAD_TYPES)},
    )

    def __post_init__(self) -> None:
        check_rerank_score(self.rerank_score)  # argparse checks choices, a JSON argument file does not
        if isinstance(self.decode_threads, bool) or not isinstance(self.decode_threads, int) or self.decode_threads < 0:
            raise ValueError(f"decode_threads must be an int >= 0 (0: one per core), got {self.decode_threads!r}.")
        if self.decode_thread_type not in DECODE_THREAD_TYPES:
            raise ValueError(
                f"decode_thread_type must be one of {DECODE_THREAD_TYPES}, got {self.decode_thread_type!r}."
            )


def restores_torch_threads(main):
    """A run script's `main`, which may set the process's thread count (`--torch_num_threads`), restores the caller's
    count when it returns: called in-process (tests, benchmarks) it leaves the caller's setting as it found it."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        try:
            return main(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _explicit_flags(argv: list[str]) -> set[str]:
    return {item[2:].split("=", 1)[0].replace("-", "_") for item in argv if item.startswith("--")}


def _as_flags(values: dict, skip: set[str]) -> list[str]:
    argv = []
    for key, value in values.items():
        if key in skip or value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(str(item) for item in value)]
        else:
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def parse_script_arguments(
    argv: list[str] | None, demo_arguments: dict, description: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse a run script's arguments and check them before any work.

    On the synthetic InstVL (no `--dataset_name_or_path`) the script's `demo_arguments` are the defaults: each
    applies unless its flag is given (`--max_steps 20` is the demo, shorter), and the demo's `config_overrides`
    are merged with the given ones (a given field wins). A single `.json` argument is a complete argument file.

    Decoding and collating happen in the collator, so Trainer must pass every column through
    (`remove_unused_columns=False`) and each rank reads its own data instead of rank 0 decoding and broadcasting
    every batch (`dispatch_batches=False`). The process's thread count changes only when `--torch_num_threads`
    asks for it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments), description=description,
        usage="%(prog)s [--flag value ...] | %(prog)s args.json", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        given = _explicit_flags(argv)
        if "dataset_name_or_path" not in given:
            fields = {f.name for dc in parser.dataclass_types for f in dataclasses.fields(dc)}
            demo = {key: value for key, value in demo_arguments.items() if key in fields}
            if "config_overrides" in given and demo.get("config_overrides"):
                position = next(i for i, item in enumerate(argv) if item.split("=", 1)[0] == "--config_overrides")
                if "=" in argv[position]:
                    argv[position] = f"--config_overrides={demo['config_overrides']},{argv[position].split('=', 1)[1]}"
                else:
                    argv[position + 1] = f"{demo['config_overrides']},{argv[position + 1]}"
            argv = _as_flags(demo, skip=given) + argv
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    # Argument errors before any file is written or any data is read.
    build_config(model_args)
    check_dataset_source(data_args.dataset_name_or_path)
    training_args.remove_unused_columns = False
    training_args.accelerator_config.dispatch_batches = False
    if data_args.torch_num_threads is not None:
        torch.set_num_threads(data_args.torch_num_threads)
    set_seed(training_args.seed)
    return model_args, data_args, training_args


def check_dataset_source(value: str | None) -> None:
    """Fail at once on a data source that cannot exist, instead of after the Hub client's retries.

    A path-like value (absolute, relative with `./` or `../`, `~`, a file name with an extension, or more than
    one `/`) must exist locally; a `namespace/name` value that is no local folder must be a Hub dataset, which is
    asked once (and refused at once with `HF_HUB_OFFLINE=1`).
    """
    if value is None or os.path.exists(os.path.expanduser(value)):
        return
    path_like = (
        os.path.isabs(value) or value.startswith((".", "~")) or "\\" in value or value.count("/") != 1
        or os.path.splitext(value)[1].lower() in (".json", ".jsonl", ".parquet", ".tar", ".csv")
    )
    if path_like:
        raise FileNotFoundError(f"--dataset_name_or_path {value!r}: no such file or folder.")
    from huggingface_hub import constants, dataset_info
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"--dataset_name_or_path {value!r} is not a local folder, and the Hub is off (HF_HUB_OFFLINE=1)."
        )
    try:
        dataset_info(value, timeout=10)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(f"--dataset_name_or_path {value!r}: neither a local folder nor a Hub dataset.") from error
    except HfHubHTTPError:  # the repository exists (gated, or the Hub answered otherwise): let the loader decide
        return
    except Exception as error:  # noqa: BLE001 - connection errors of the HTTP client (httpx), timeouts
        raise FileNotFoundError(
            f"--dataset_name_or_path {value!r} is not a local folder, and the Hub cannot be reached ({error})."
        ) from error


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


def _config_field_names(config_class) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def validated_overrides(text: str | None) -> list[tuple[str | None, str, object]]:
    """`--config_overrides` as `(sub_config or None, field, value)` triples; an override naming no field of its
    config is an error that lists the close matches (a misspelled field must not pass silently)."""
    from transformers import CLIPVisionConfig

    from modeling_instap import InstAPTextConfig, InstAPVisionConfig

    sub_config_classes = {
        "vision_config": InstAPVisionConfig, "text_config": InstAPTextConfig, "teacher_config": CLIPVisionConfig,
    }
    overrides = []
    for name, value in parse_overrides(text).items():
        *parents, leaf = name.split(".")
        if len(parents) > 1 or (parents and parents[0] not in sub_config_classes):
            raise ValueError(
                f"config override {name!r}: {'.'.join(parents)!r} is not a sub-config (use one of "
                f"{sorted(sub_config_classes)})."
            )
        config_class = sub_config_classes[parents[0]] if parents else InstAPConfig
        known = _config_field_names(config_class) - (set() if parents else set(sub_config_classes))
        if leaf not in known:
            close = difflib.get_close_matches(leaf, sorted(known), n=3)
            hint = f"; did you mean {', '.join(repr('.'.join(parents + [c])) for c in close)}?" if close else ""
            raise ValueError(f"config override {name!r}: {config_class.__name__} has no field {leaf!r}{hint}")
        overrides.append((parents[0] if parents else None, leaf, value))
    return overrides


def compile_teacher_if_asked(model, model_args: ModelArguments) -> None:
    """`--compile_teacher`: the model's frozen teacher runs compiled (an error for a model without one)."""
    if not model_args.compile_teacher:
        return
    if getattr(model, "distillation", None) is None:
        raise ValueError("--compile_teacher: this model has no teacher (its config's teacher_config is None).")
    model.distillation.compile_teacher()


def build_config(model_args: ModelArguments, tokenizer=None) -> InstAPConfig:
    """A config from the preset and overrides (`sub_config.field=value` reaches a sub-config); the text ids follow
    the tokenizer."""
    fields = InstAPConfig.preset_fields(model_args.preset)
    for parent, leaf, value in validated_overrides(model_args.config_overrides):
        if parent is not None and fields.get(parent) is None:
            fields[parent] = {}
        (fields if parent is None else fields[parent])[leaf] = value
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


def apply_overrides(config: InstAPConfig, text: str | None) -> InstAPConfig:
    """Set `--config_overrides` on a loaded config (continuing from a checkpoint), then check every value."""
    for parent, leaf, value in validated_overrides(text):
        target = config if parent is None else getattr(config, parent)
        if target is None:
            raise ValueError(f"config override {parent}.{leaf}: the checkpoint has no {parent}.")
        setattr(target, leaf, value)
    for sub in (config.vision_config, config.text_config):
        sub.validate_values()
    config.validate_values()
    return config


def build_processor(
    config: InstAPConfig, tokenizer, num_frames: int, max_length: int, random_resized_crop_scale=(0.5, 1.0),
    **processor_options,
) -> InstAPProcessor:
    vision = config.vision_config
    video_processor = InstAPVideoProcessor(
        size={"height": vision.image_size, "width": vision.image_size},
        num_frames=num_frames,
        patch_size=vision.patch_size,
        instance_crop_size={"height": config.crop_size, "width": config.crop_size},
        random_resized_crop_scale=tuple(random_resized_crop_scale),
    )
    return InstAPProcessor(
        video_processor=video_processor, tokenizer=tokenizer, max_length=max_length, **processor_options
    )


def build_train_dataset(dataset: str, data_args: DataArguments, num_frames: int, batch_size: int, seed: int,
                        max_instances_per_sample: int | None, stage: int):
    """Decoding happens in the DataLoader workers (`InstVLMapDataset.__getitem__` / the iterable's `__iter__`)."""
    options = InstVLExampleOptions(
        num_frames=num_frames,
        training=True,
        seed=seed,
        max_instances_per_sample=max_instances_per_sample,
        require_caption=stage == 2,
        load_instances=stage == 2,
        # The caps are the trainer's, on counts over all workers (`trainer_bad_sample_caps`): per worker they would
        # mean something else for each worker count.
        max_bad_samples=None,
        max_bad_fraction=None,
        decode_threads=data_args.decode_threads,
        decode_thread_type=data_args.decode_thread_type,
    )
    records = load_instvl(dataset, data_args.train_split, media_root=data_args.media_root, streaming=data_args.streaming)
    if data_args.streaming:
        # The trainer splits the stream per rank once (split_dataset_by_node) and keeps accelerate's sharding off.
        return InstVLIterableDataset(records, options, batch_size=batch_size)
    return InstVLMapDataset(records, options)


def trainer_bad_sample_caps(data_args: DataArguments) -> dict:
    """The trainer arguments that stop a run whose data is mostly bad (counted over every DataLoader worker)."""
    return {
        "max_bad_samples": data_args.max_bad_samples,
        "max_bad_fraction": data_args.max_bad_fraction,
        "min_samples_for_fraction": data_args.min_samples_for_bad_fraction,
    }


def build_eval_dataset(dataset: str, split: str, data_args: DataArguments, num_frames: int) -> InstVLMapDataset:
    records = load_instvl(dataset, split, media_root=data_args.media_root, streaming=False)
    if data_args.max_eval_samples is not None:
        records = records.select(range(min(len(records), data_args.max_eval_samples)))
    return InstVLMapDataset(records, num_frames=num_frames, training=False, max_instances_per_sample=None)


__all__ = [
    "DataArguments",
    "ModelArguments",
    "build_config",
    "build_eval_dataset",
    "build_processor",
    "build_tokenizer",
    "apply_overrides",
    "build_train_dataset",
    "check_dataset_source",
    "parse_overrides",
    "parse_script_arguments",
    "restores_torch_threads",
    "resolve_dataset",
]


_CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def missing_checkpoint_files(folder: str) -> list[str]:
    """What a Trainer checkpoint folder lacks to be resumed from (a kill during the write leaves it partial)."""
    missing = []
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _CHECKPOINT_WEIGHTS):
        missing.append("model weights")
    if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
        missing.append("trainer_state.json")
    return missing


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint `--resume_from_checkpoint` means: a path (checked complete), or, for `True` (as a flag value
    the string "True"), the newest *complete* `checkpoint-N` of `output_dir`; partial ones are skipped with a
    warning. `None`/"False": start fresh."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        pattern = re.compile(r"^checkpoint-(\d+)$")
        found = sorted(
            ((int(m.group(1)), name) for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
             if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
            reverse=True,
        )
        for _, name in found:
            folder = os.path.join(output_dir, name)
            missing = missing_checkpoint_files(folder)
            if not missing:
                return folder
            logger.warning(f"Skipping the incomplete checkpoint {folder} (no {', '.join(missing)}).")
        raise ValueError(f"--resume_from_checkpoint True: no complete checkpoint-N folder in {output_dir!r}.")
    folder = os.fspath(value)
    if not os.path.isdir(folder):
        raise ValueError(f"--resume_from_checkpoint {folder!r} is not a folder.")
    missing = missing_checkpoint_files(folder)
    if missing:
        raise ValueError(f"--resume_from_checkpoint {folder!r} is incomplete (no {', '.join(missing)}).")
    return folder

