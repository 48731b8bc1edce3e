# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Hub export of a trained InstAP model: a self-contained model repository, its checks, the push.

- [`export_for_hub`]: writes a folder that is a valid Hub model repository: `config.json` (with `auto_map` and the
  `custom_pipelines` entry of the zero-shot pipeline), safetensors weights, the processor files (tokenizer and
  `processor_config.json` with `AutoProcessor`/`AutoVideoProcessor` entries), the remote code of the model, of the
  processor and of the pipeline (flat, relative imports only) and the generated model card `README.md`. The folder
  loads with `Auto*.from_pretrained(folder_or_repo_id, trust_remote_code=True)` where no InstAP package is installed.
- [`check_hub_folder`]: what would break for a Hub user (missing files, unresolved imports, imports of the InstAP
  packages in the copied code, `auto_map` entries naming missing code).
- [`push_folder`]: uploads a folder with `HfApi.upload_folder`; `dry_run=True` only lists what would be uploaded.
"""

from __future__ import annotations

import ast
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PUSH_IGNORE_PATTERNS",
    "PIPELINE_TASK",
    "check_hub_folder",
    "export_for_hub",
    "push_folder",
]

PIPELINE_TASK = "zero-shot-video-classification"
# Import names of the InstAP packages: code copied into a Hub repository must never import them.
PROJECT_PACKAGES = ("modeling_instap", "instap_processing", "instap_eval", "instap_train")
# Files of a training output folder that do not belong in a model repository: Trainer checkpoints and their
# optimizer states, pickled arguments, logs.
DEFAULT_PUSH_IGNORE_PATTERNS = [
    "checkpoint-*",
    "runs/",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "*.pyc",
    "__pycache__/",
    ".ipynb_checkpoints/",
]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: str, data: Mapping) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def export_for_hub(
    model,
    processor,
    out_dir: str | os.PathLike,
    eval_results: str | os.PathLike | Mapping | None = None,
    *,
    repo_id: str | None = None,
    backbone_only: bool = False,
    base_card: Any = None,
    dataset_id: str | None = None,
) -> list[str]:
    """Writes `model` and `processor` as a self-contained Hub model repository in `out_dir`.

    Args:
        model: an `InstAPModel` or `InstAPForPreTraining` (e.g. `trainer.model` after training).
        processor: its `InstAPProcessor` (tokenizer and video processor).
        out_dir: the folder to write (created; existing files of the same names are replaced).
        eval_results: evaluation results to put in the card's `model-index`: the path of an `eval_results.json`
            written by `run_align.py` or of a `python -m instap_eval --output` JSON, or the loaded dict. Copied to
            `out_dir/eval_results.json`.
        repo_id: the Hub id the folder will be pushed to (used in the card's code and links).
        backbone_only: for an `InstAPForPreTraining`, save only the `InstAPModel` backbone (no MLM head, no frozen
            CLIP teacher: about 30 % fewer parameters for instap-l); the folder then cannot resume pre-training.
        base_card: a model card (path, text or `ModelCard`) whose description, uses and citation sections the
            generated card keeps (e.g. the repository's `model_card.md`).
        dataset_id: the Hub id of the evaluation data (InstVL splits), for the card's `model-index`.

    Returns:
        The sorted relative paths of the files in `out_dir`.
    """
    from modeling_instap import InstAPConfig

    from .model_card import generate_model_card

    out_dir = os.fspath(out_dir)
    if hasattr(model, "peft_config"):
        raise TypeError(
            "export_for_hub needs a plain InstAP model; merge the LoRA adapters first "
            "(`model = model.merge_and_unload()`, or `instap_train.peft_utils.merge_and_save`)."
        )
    if not isinstance(getattr(model, "config", None), InstAPConfig):
        raise TypeError(f"export_for_hub needs an InstAP model (config InstAPConfig), got {type(model).__name__}.")
    if backbone_only and hasattr(model, "instap"):
        model = model.instap
    os.makedirs(out_dir, exist_ok=True)

    # Both saves write their `auto_map` and code (and the model the pipeline, under `custom_pipelines`), as every
    # save in the project does; the export adds the card and the evaluation results.
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)

    if eval_results is not None:
        results = eval_results if isinstance(eval_results, Mapping) else _read_json(os.fspath(eval_results))
        _write_json(os.path.join(out_dir, "eval_results.json"), results)
        eval_results = results
    card = generate_model_card(
        out_dir, eval_results, repo_id=repo_id, base_card=base_card, dataset_id=dataset_id
    )
    card.save(os.path.join(out_dir, "README.md"))

    problems = check_hub_folder(out_dir)
    if problems:
        raise RuntimeError("The exported folder is not a valid InstAP Hub repository:\n- " + "\n- ".join(problems))
    return _list_files(out_dir)


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------


def _list_files(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in (".git", ".cache")]
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(files)


def _module_problems(folder: str, filename: str) -> list[str]:
    """Relative imports of `filename` that have no file in `folder`, and imports of the InstAP packages."""
    path = os.path.join(folder, filename)
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=filename)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 1:
                problems.append(f"{filename}: `from {'.' * node.level}{node.module or ''}` leaves the flat folder")
            elif node.level == 1:
                targets = [node.module] if node.module else [alias.name for alias in node.names]
                for target in targets:
                    target_file = target.split(".")[0] + ".py"
                    if not os.path.isfile(os.path.join(folder, target_file)):
                        problems.append(f"{filename}: relative import `.{target}` but {target_file} is missing")
            elif node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
                problems.append(f"{filename}: imports the InstAP package `{node.module}`")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT_PACKAGES:
                    problems.append(f"{filename}: imports the InstAP package `{alias.name}`")
    return problems


def _auto_map_problems(folder: str, source: str, auto_map: Mapping[str, Any]) -> list[str]:
    problems = []
    for auto_class, reference in auto_map.items():
        references = reference if isinstance(reference, (list, tuple)) else [reference]
        for ref in filter(None, references):
            if "--" in ref:  # code in another repository
                continue
            module = ref.rsplit(".", 1)[0]
            if not os.path.isfile(os.path.join(folder, module + ".py")):
                problems.append(f"{source}: auto_map {auto_class} -> {ref}, but {module}.py is missing")
    return problems


def check_hub_folder(folder: str | os.PathLike, require_processor: bool = True) -> list[str]:
    """Problems a Hub user loading `folder` with `trust_remote_code=True` would hit (empty list: none found).

    Checked: `config.json` with an `auto_map` naming `AutoConfig` and `AutoModel`; safetensors weights (no pickles);
    a processor config with `AutoProcessor` and a nested video processor with `AutoVideoProcessor` (unless
    `require_processor=False`); a tokenizer; every `auto_map`/`custom_pipelines` entry names a file of the folder;
    every copied `.py` file imports only sibling files relatively and never the InstAP packages; a `README.md`.
    """
    folder = os.fspath(folder)
    problems: list[str] = []
    files = set(_list_files(folder))
    if "config.json" not in files:
        return ["config.json is missing"]
    config = _read_json(os.path.join(folder, "config.json"))
    auto_map = config.get("auto_map") or {}
    for needed in ("AutoConfig", "AutoModel"):
        if needed not in auto_map:
            problems.append(f"config.json: auto_map has no {needed}")
    problems += _auto_map_problems(folder, "config.json", auto_map)
    for task, info in (config.get("custom_pipelines") or {}).items():
        problems += _auto_map_problems(folder, "config.json", {f"custom_pipelines[{task}]": info.get("impl")})
    if not any(name in files for name in WEIGHT_FILES):
        problems.append("no safetensors weights (model.safetensors or its index)")
    pickles = sorted(name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))
    if pickles:
        problems.append(f"pickled files would be uploaded: {pickles}")

    if require_processor:
        if "processor_config.json" not in files:
            problems.append("processor_config.json is missing")
        else:
            processor_config = _read_json(os.path.join(folder, "processor_config.json"))
            processor_map = processor_config.get("auto_map") or {}
            if "AutoProcessor" not in processor_map:
                problems.append("processor_config.json: auto_map has no AutoProcessor")
            problems += _auto_map_problems(folder, "processor_config.json", processor_map)
            video = processor_config.get("video_processor")
            video_map = (video or {}).get("auto_map") or {}
            if isinstance(video, Mapping) and "AutoVideoProcessor" not in video_map:
                problems.append("processor_config.json: video_processor.auto_map has no AutoVideoProcessor")
            problems += _auto_map_problems(folder, "processor_config.json (video_processor)", video_map)
        if not {"tokenizer.json", "vocab.txt"} & files:
            problems.append("no tokenizer (tokenizer.json or vocab.txt)")

    for name in sorted(files):
        if name.endswith(".py"):
            if "/" in name:
                problems.append(f"{name}: remote code must be at the top level of the repository")
                continue
            problems += _module_problems(folder, name)
    if "README.md" not in files:
        problems.append("README.md (the model card) is missing")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------------


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    dry_run: bool = True,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload InstAP model",
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    check: bool = True,
) -> list[str]:
    """Uploads `folder` to the model repository `repo_id` (created if needed) with `HfApi().upload_folder`.

    `dry_run=True` (the default) contacts nothing and returns the files that would be uploaded, filtered exactly as
    `upload_folder` filters them (`allow_patterns`, `ignore_patterns` = [`DEFAULT_PUSH_IGNORE_PATTERNS`] unless given,
    plus huggingface_hub's own `.git`/`.cache` patterns). With `check=True` the folder must pass
    [`check_hub_folder`] first (a training output folder must go through [`export_for_hub`]).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder.")
    ignore = list(DEFAULT_PUSH_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns)
    allow = list(allow_patterns) if allow_patterns is not None else None
    files = list(
        filter_repo_objects(
            _list_files(folder), allow_patterns=allow, ignore_patterns=ignore + list(DEFAULT_IGNORE_PATTERNS)
        )
    )
    if check:
        problems = [p for p in check_hub_folder(folder) if not p.startswith("pickled files")]
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
        if pickles:
            problems.append(f"pickled files would be uploaded: {pickles}")
        if problems:
            raise ValueError(f"{folder} is not ready for the Hub:\n- " + "\n- ".join(problems))
    if dry_run:
        logger.info("Dry run: %d files would be uploaded to %s: %s", len(files), repo_id, files)
        return files
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
        allow_patterns=allow,
        ignore_patterns=ignore,
    )
    logger.info("Uploaded %d files to %s (%s)", len(files), repo_id, getattr(commit, "commit_url", commit))
    return files
