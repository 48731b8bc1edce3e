# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for InstAP checkpoints (`huggingface_hub.ModelCard`).

- [`generate_model_card`]: the card of any trained folder, from its config and weights (preset, sizes, parameter
  counts by part, the loss weights, mask settings, frames, learned temperatures) and its evaluation JSON (the
  `eval_results.json` of `run_align.py` or the `--output` of `python -m instap_eval`), so that a pushed model carries
  its own measured results in `model-index`.
- [`eval_results_from_json`]: those JSONs as `EvalResult`s; [`paper_eval_results`]: the InstAP paper's numbers
  (METHOD §8), marked with their source, as in the repository's `model_card.md` for `org/instap-l`.
- [`usage_markdown`]: the "How to use" code of a card (it runs as written against any exported folder).

`ModelCard.validate()` posts the card to the Hub (network); offline, [`check_card_metadata`] parses the metadata
with `ModelCardData` and checks that the `model-index` round-trips.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from instap_eval.benchmarks import format_results_table, results_rows
from instap_eval.retrieval import RECALL_KEYS
from instap_processing.instvl import INSTVL_TEST_SPLITS

__all__ = [
    "CITATION",
    "PAPER_URL",
    "check_card_metadata",
    "describe_checkpoint",
    "eval_results_from_json",
    "generate_model_card",
    "paper_eval_results",
    "usage_markdown",
]

PAPER_TITLE = "InstAP: Instance-Aware Vision-Language Pre-Train for Spatial-Temporal Understanding"
PAPER_URL = "https://arxiv.org/abs/2604.08337"
PAPER_SOURCE = "InstAP paper (Kumar et al., CVPR 2026)"
CITATION = """@inproceedings{kumar2026instap,
  title     = {InstAP: Instance-Aware Vision-Language Pre-Train for Spatial-Temporal Understanding},
  author    = {Kumar, Ashutosh and Saini, Rajat and Pan, Jingjing and Erdogan, Mustafa and Zhang, Mingfang and
               Le Dem, Betty and Kobori, Norimasa and Kong, Quan},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2026},
  eprint    = {2604.08337},
  archivePrefix = {arXiv}
}"""
# The Hub task closest to zero-shot video classification (the shipped pipeline's task, not a Hub task): X-CLIP's.
PIPELINE_TAG = "video-classification"
DEFAULT_TAGS = [
    "video-text-retrieval",
    "zero-shot-video-classification",
    "video-language",
    "vision-language",
    "instance-aware",
    "umt",
    "custom_code",
]
PRESET_BASE_MODELS = {
    "instap-l": ["google-bert/bert-large-uncased", "openai/clip-vit-large-patch14"],
    "instap-b": ["google-bert/bert-base-uncased", "openai/clip-vit-base-patch16"],
}
METRIC_NAMES = {
    "t2v_r1": "T2V R@1", "t2v_r5": "T2V R@5", "t2v_r10": "T2V R@10",
    "v2t_r1": "V2T R@1", "v2t_r5": "V2T R@5", "v2t_r10": "V2T R@10", "r_mean": "mean recall",
}
TASKS = {
    "global": ("video-text-retrieval", "Zero-shot video-text retrieval"),
    "instance": ("instance-text-retrieval", "Zero-shot instance-text retrieval"),
}
SCORINGS = {"dual_encoder": ("", "dual encoder"), "reranked": ("_reranked", "re-ranked by the matching head")}
# Sections of a base card that a generated card replaces with its own.
REGENERATED_SECTIONS = (
    "How to use", "Model details", "Model description", "Evaluation results (this checkpoint)",
)

# METHOD §8: zero-shot T2V R@1/5/10 (paper Table 2) and InstVL T2V R@1 (Table 1).
PAPER_ZERO_SHOT = {
    ("msrvtt", "MSR-VTT (1k-A)"): (41.1, 65.2, 73.6),
    ("didemo", "DiDeMo (paragraph-to-video)"): (54.0, 78.2, 84.5),
    ("msvd", "MSVD"): (49.2, 77.0, 85.1),
    ("lsmdc", "LSMDC"): (23.5, 42.7, 50.3),
    ("activitynet_captions", "ActivityNet Captions (paragraph-to-video)"): (50.7, 77.2, 86.6),
}
PAPER_INSTVL = {  # split: (instance T2V R@1, global T2V R@1)
    "img_1k": (50.25, 99.20),
    "img_zero_1k": (41.94, 88.70),
    "video_1k": (60.63, 94.50),
}
INSTVL_NAMES = {
    "img_1k": "InstVL-1K (img)", "img_10k": "InstVL-10K (img)", "img_zero_1k": "InstVL-1K (img-zero)",
    "img_zero_10k": "InstVL-10K (img-zero)", "video_1k": "InstVL-1K (video)",
}


# --------------------------------------------------------------------------------------------------------------------
# Evaluation results
# --------------------------------------------------------------------------------------------------------------------


def paper_eval_results() -> list[EvalResult]:
    """The paper's results (METHOD §8) as `EvalResult`s whose source is the paper (not measured by this code)."""
    results = []
    for (dataset_type, dataset_name), values in PAPER_ZERO_SHOT.items():
        for key, value in zip(("t2v_r1", "t2v_r5", "t2v_r10"), values):
            results.append(
                EvalResult(
                    task_type="video-text-retrieval",
                    task_name="Zero-shot text-to-video retrieval",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split="test",
                    metric_type=key,
                    metric_name=f"{METRIC_NAMES[key]} (paper)",
                    metric_value=value,
                    source_name=f"{PAPER_SOURCE}, Table 2",
                    source_url=PAPER_URL,
                )
            )
    for part, column in (("instance", 0), ("global", 1)):
        task_type, task_name = TASKS[part]
        for split, values in PAPER_INSTVL.items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type="instvl",
                    dataset_name=INSTVL_NAMES[split],
                    dataset_config=split,
                    dataset_split="test",
                    metric_type="t2v_r1",
                    metric_name="T2V R@1 (paper)",
                    metric_value=values[column],
                    source_name=f"{PAPER_SOURCE}, Table 1",
                    source_url=PAPER_URL,
                )
            )
    return results


def _rows(data: Mapping) -> list[tuple[str, str, str, Mapping]]:
    """`(evaluation name, part, scoring key, metrics)` of a run_align or instap_eval JSON (one results schema)."""
    results = data.get("results", {})
    return list(results_rows({name: value for name, value in results.items() if isinstance(value, Mapping)}))


def _looks_like_repo_id(value: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value)) and not os.path.exists(value)


def hub_dataset_id(value: str | None) -> str | None:
    """`value` when it is a Hub data set id (`namespace/name`, not a local folder); `None` for a local path, which
    must never reach a card that is published."""
    return value if value and _looks_like_repo_id(value) else None


def _dataset_for(name: str, data: str | None, dataset_id: str | None) -> dict[str, str]:
    dataset_id = hub_dataset_id(dataset_id)
    split = name.split()[-1] if name else name
    if split in INSTVL_TEST_SPLITS:
        source = dataset_id or (data if data and _looks_like_repo_id(data) else "instvl")
        return {
            "dataset_type": source,
            "dataset_name": INSTVL_NAMES[split],
            "dataset_config": split,
            "dataset_split": "test",
        }
    if data and _looks_like_repo_id(data):
        dataset_type = data
    elif data:
        dataset_type = os.path.splitext(os.path.basename(data))[0]
    else:
        dataset_type = name
    return {"dataset_type": dataset_type, "dataset_name": name or dataset_type, "dataset_split": "test"}


def _load_json(source: str | os.PathLike | Mapping) -> Mapping:
    if isinstance(source, Mapping):
        return source
    with open(os.fspath(source), encoding="utf-8") as handle:
        return json.load(handle)


def eval_results_from_json(
    eval_json: str | os.PathLike | Mapping | Sequence,
    dataset_id: str | None = None,
    source_url: str | None = None,
) -> list[EvalResult]:
    """`EvalResult`s of one or several evaluation JSONs (paths or loaded dicts).

    Accepts the `eval_results.json` of `run_align.py` and the output of `python -m instap_eval`, which share one
    schema (`{"results": {name: {"global": {"dual_encoder": ..., "reranked": ...}, "instance": ...}}}`, see
    `instap_eval.benchmarks.results_rows`). Dual-encoder metrics have the types `t2v_r1`, ...;
    re-ranked ones `t2v_r1_reranked`, ...; non-finite values are left out. InstVL splits are named by `dataset_id`
    (or the JSON's `data` when it is a Hub id). `source_url` (e.g. the repository's `eval_results.json`) marks the
    results as measured on this checkpoint.
    """
    sources = [eval_json] if isinstance(eval_json, (str, os.PathLike, Mapping)) else list(eval_json)
    results = []
    for source in sources:
        data = _load_json(source)
        data_name = data.get("data") if isinstance(data.get("data"), str) else None
        for name, part, scoring, metrics in _rows(data):
            task_type, task_name = TASKS[part]
            suffix, scoring_name = SCORINGS[scoring]
            for key in RECALL_KEYS:
                value = metrics.get(key)
                if value is None or not math.isfinite(float(value)):
                    continue
                source_kwargs = (
                    {"source_name": "eval_results.json of this repository (measured)", "source_url": source_url}
                    if source_url
                    else {}
                )
                results.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=task_name,
                        metric_type=key + suffix,
                        metric_name=f"{METRIC_NAMES[key]} ({scoring_name})",
                        metric_value=round(float(value), 4),
                        **_dataset_for(name, data_name, dataset_id),
                        **source_kwargs,
                    )
                )
    return results


def _results_table(eval_json: Mapping | Sequence | None) -> str:
    if eval_json is None:
        return ""
    sources = [eval_json] if isinstance(eval_json, Mapping) else list(eval_json)
    evaluations = {}
    for source in sources:
        for name, evaluation in _load_json(source).get("results", {}).items():
            label, copy = name, 1
            while label in evaluations:  # the same split in two JSONs: both rows stay
                copy += 1
                label = f"{name} ({copy})"
            evaluations[label] = evaluation
    return format_results_table(evaluations) if any(results_rows(evaluations)) else ""


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint description
# --------------------------------------------------------------------------------------------------------------------


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            return sorted({os.path.join(folder, f) for f in json.load(handle)["weight_map"].values()})
    single = os.path.join(folder, "model.safetensors")
    return [single] if os.path.isfile(single) else []


_PARTS = (
    ("vision_model.", "video encoder"),
    ("text_model.", "text + fusion encoder"),
    ("attention_pool.", "instance attention pool"),
    ("distillation.teacher.", "CLIP teacher (frozen)"),
    ("distillation.heads.", "distillation heads"),
    ("mlm_head.", "MLM head (decoder tied to the word embeddings)"),
)
OTHER_PART = "projections, matching head, temperatures"


def _parameter_counts(folder: str) -> tuple[dict[str, int], dict[str, float]]:
    """Parameters by part from the safetensors headers (each saved tensor once), and the saved temperatures."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    temperatures: dict[str, float] = {}
    for path in _weight_files(folder):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                name = key[len("instap.") :] if key.startswith("instap.") else key
                size = math.prod(handle.get_slice(key).get_shape())
                part = next((label for prefix, label in _PARTS if name.startswith(prefix)), OTHER_PART)
                counts[part] = counts.get(part, 0) + size
                if name in ("temperature", "instance_temperature"):
                    temperatures[name] = float(handle.get_tensor(key).float())
    order = [label for _, label in _PARTS] + [OTHER_PART]
    return {label: counts[label] for label in order if label in counts}, temperatures


def describe_checkpoint(model_folder: str | os.PathLike) -> dict[str, Any]:
    """What a card says about a saved InstAP folder: preset, architecture, parameters, objective, processor."""
    from modeling_instap import InstAPConfig

    folder = os.fspath(model_folder)
    config = InstAPConfig.from_pretrained(folder)
    counts, temperatures = _parameter_counts(folder)
    total = sum(counts.values())
    teacher = counts.get("CLIP teacher (frozen)", 0)
    processor: dict[str, Any] = {}
    processor_path = os.path.join(folder, "processor_config.json")
    if os.path.isfile(processor_path):
        with open(processor_path, encoding="utf-8") as handle:
            processor = json.load(handle)
    video = processor.get("video_processor", {}) or {}
    architectures = list(config.architectures or [])
    v, t, c = config.vision_config, config.text_config, config.teacher_config
    return {
        "preset": config.preset_name() or "custom",
        "architectures": architectures,
        "vision": {
            "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
            "patch_size": v.patch_size, "tubelet_size": v.tubelet_size, "image_size": v.image_size,
            "num_frames": v.num_frames,
        },
        "text": {
            "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers, "fusion_layer": t.fusion_layer,
            "vocab_size": t.vocab_size,
        },
        "teacher": None if c is None else {
            "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers, "patch_size": c.patch_size,
            "image_size": config.teacher_image_size, "num_layers_aligned": config.teacher_num_layers,
        },
        "projection_dim": config.projection_dim,
        "parameters": {"total": total, "without_teacher": total - teacher, "by_part": counts},
        "temperatures": {
            "init": config.temperature_init,
            "instance_init": config.instance_temperature_init,
            **temperatures,
        },
        "objective": {
            name: getattr(config, name)
            for name in (
                "lambda_rec", "lambda_vtc", "lambda_vtm", "lambda_mlm", "lambda_inst", "lambda_inst_vtc",
                "lambda_inst_vtm", "lambda_inst_mlm", "mlm_probability",
            )
        },
        "masking": {
            name: getattr(config, name)
            for name in (
                "mask_strategy", "video_mask_ratio", "image_mask_ratio", "crop_mask_strategy",
                "max_instances_per_sample", "crop_size",
            )
        },
        "processor": {
            "num_frames": video.get("num_frames"),
            "size": video.get("size"),
            "max_length": processor.get("max_length"),
        },
    }


def _details_markdown(info: Mapping[str, Any]) -> str:
    v, t, teacher = info["vision"], info["text"], info["teacher"]
    params = info["parameters"]
    proc = info["processor"]
    size = proc.get("size") or {}
    lines = [
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| preset | `{info['preset']}` |",
        f"| saved class | {', '.join(f'`{a}`' for a in info['architectures']) or 'n/a'} |",
        f"| video encoder | ViT, width {v['hidden_size']}, depth {v['num_hidden_layers']}, "
        f"{v['num_attention_heads']} heads, MLP {v['intermediate_size']}, patch {v['patch_size']}, "
        f"tubelet {v['tubelet_size']}, {v['image_size']}² input |",
        f"| text + fusion encoder | BERT, width {t['hidden_size']}, {t['num_hidden_layers']} layers: "
        f"0–{t['fusion_layer'] - 1} text, {t['fusion_layer']}–{t['num_hidden_layers'] - 1} fusion "
        f"(cross-attention to video tokens), vocabulary {t['vocab_size']} |",
        f"| shared embedding | {info['projection_dim']} |",
    ]
    if teacher is not None:
        lines.append(
            f"| teacher | CLIP ViT (width {teacher['hidden_size']}, depth {teacher['num_hidden_layers']}, patch "
            f"{teacher['patch_size']}) at {teacher['image_size']}², last {teacher['num_layers_aligned']} layers "
            "aligned; frozen, used in training only |"
        )
    lines += [
        f"| parameters | {params['total']:,} in the weights ({params['without_teacher']:,} without the teacher) |",
        f"| frames, size | {proc.get('num_frames') or v['num_frames']} frames at "
        f"{size.get('height', v['image_size'])}×{size.get('width', v['image_size'])} "
        "(middle frame of each segment at inference) |",
        f"| text length | {proc.get('max_length') or 'n/a'} tokens (64 for paragraph benchmarks) |",
    ]
    temperatures = info["temperatures"]
    if "temperature" in temperatures:
        lines.append(
            f"| learned τ, τ_inst | {temperatures['temperature']:.4f}, "
            f"{temperatures.get('instance_temperature', float('nan')):.4f} (init {temperatures['init']}, "
            f"{temperatures['instance_init']}) |"
        )
    lines += ["", "Parameters by part:", "", "| part | parameters |", "|---|---:|"]
    lines += [f"| {part} | {count:,} |" for part, count in params["by_part"].items()]
    objective, masking = info["objective"], info["masking"]
    lines += [
        "",
        "Training objective (METHOD §4.3, Eq. 11–13): L = λ_rec·L_rec + λ_vtc·VTC + λ_vtm·VTM + λ_mlm·MLM + "
        "λ_inst·(λ_inst_vtc·VTC_inst + λ_inst_vtm·VTM_inst + λ_inst_mlm·MLM_inst), with "
        + ", ".join(f"{k} = {objective[k]}" for k in objective if k.startswith("lambda"))
        + f"; MLM masking probability {objective['mlm_probability']}.",
        "",
        f"Masking: teacher-guided `{masking['mask_strategy']}` masks with ratio {masking['video_mask_ratio']} "
        f"(videos) and {masking['image_mask_ratio']} (images); instance crops `{masking['crop_mask_strategy']}` in "
        f"training, never at evaluation; at most {masking['max_instances_per_sample']} instances per sample and "
        f"step; crops of {masking['crop_size']}² pixels.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------------------------------


def usage_markdown(repo_id: str) -> str:
    """The "How to use" section: plain `transformers` with `trust_remote_code=True` (no InstAP install needed)."""
    return f'''## How to use

The model, its processor and a zero-shot pipeline ship as remote code: only `transformers`, `torch`,
`torchvision` and `av` (PyAV, to decode videos) are needed. Review the code files of the repository before you run
them, and pin a `revision` in production.

```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

texts = ["a dog catches a frisbee in a park", "a man is cooking pasta", "two people play tennis"]
video = processor(videos=["video.mp4"])  # the middle frame of each of N segments, resized, normalised
text = processor.tokenize(texts)  # [CLS] ... [SEP], padded to the processor's max_length
with torch.no_grad():
    outputs = model(pixel_values=video["pixel_values"], **text)
probs = outputs.logits_per_video.softmax(dim=-1)  # (videos, texts): cos(video, text) / temperature
print({{t: round(p, 3) for t, p in zip(texts, probs[0].tolist())}})
```

Zero-shot video classification (or ranking captions for a video) with the pipeline; `rerank=True` re-scores the
candidates with the matching head on the fused video-text pair:

```python
from transformers import pipeline

classifier = pipeline("zero-shot-video-classification", model="{repo_id}", trust_remote_code=True)
print(classifier("video.mp4", candidate_labels=["playing tennis", "cooking", "walking a dog"]))
print(classifier("video.mp4", candidate_labels=["playing tennis", "cooking"], hypothesis_template="a video of {{}}.", rerank=True))
```

Embeddings for retrieval over a collection (unit vectors; the dot product is the frame-averaged cosine similarity),
and instance-level matching of a region track (a box per known frame, in source pixels) against descriptions:

```python
with torch.no_grad():
    video_embeds = model.get_video_features(video["pixel_values"]).pooler_output  # (videos, dim)
    text_embeds = model.get_text_features(**text).pooler_output  # (texts, dim)
print(video_embeds @ text_embeds.T)

inputs = processor(
    videos=["video.mp4"],
    instances=[[{{"caption": "the dog", "boxes": [[8, 8, 40, 40]], "frame_index": [0]}}]],
)
with torch.no_grad():
    scene_tokens = model.vision_model(inputs["pixel_values"]).last_hidden_state
    crops = model.encode_instances(inputs["instance_pixel_values"], scene_tokens, inputs["instance_sample_index"])
    queries = model.get_text_features(**processor.tokenize(["a brown dog", "a red frisbee"])).pooler_output
print(crops.instance_embeds @ queries.T)  # (instances, descriptions)
```
'''


# --------------------------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------------------------


def _load_card(card: Any) -> ModelCard | None:
    if card is None or isinstance(card, ModelCard):
        return card
    text = os.fspath(card) if isinstance(card, os.PathLike) else card
    if isinstance(text, str) and "\n" not in text and os.path.isfile(text):
        return ModelCard.load(text)
    return ModelCard(text)


def _sections(body: str) -> list[tuple[str, str]]:
    """`(title, text)` of each `## ` section of a card body (title "" for what comes before the first)."""
    sections, title, lines, in_code = [], "", [], False
    for line in body.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("## "):
            sections.append((title, "\n".join(lines).strip()))
            title, lines = line[3:].strip(), [line]
        else:
            lines.append(line)
    sections.append((title, "\n".join(lines).strip()))
    return [(t, s) for t, s in sections if s]


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def generate_model_card(
    model_folder: str | os.PathLike,
    eval_results_json: str | os.PathLike | Mapping | Sequence | None = None,
    repo_id: str | None = None,
    base_card: Any = None,
    *,
    dataset_id: str | None = None,
    model_name: str | None = None,
    datasets: Sequence[str] | None = None,
    include_base_results: bool = False,
    license: str = "apache-2.0",
) -> ModelCard:
    """The model card of a saved InstAP folder, with its measured results in `model-index`.

    Args:
        model_folder: a folder written by `save_pretrained` / `run_align.py` / [`export_for_hub`].
        eval_results_json: evaluation JSON(s) (paths or dicts; see [`eval_results_from_json`]); default: the
            folder's `eval_results.json` if there is one.
        repo_id: the Hub id of the model (code snippets and links); default `"<user>/<folder name>"`.
        base_card: a card (path, text or `ModelCard`) whose sections (description, uses, training, citation) and
            metadata (tags, datasets, base models) are kept; its "How to use" and "Model details" are replaced.
        dataset_id: the Hub id of the InstVL data the splits come from.
        include_base_results: also keep the base card's `model-index` entries (e.g. the paper's numbers, which keep
            their source). Off by default: a leaderboard would attribute them to this checkpoint.

    Returns:
        A `ModelCard`; `card.save(os.path.join(folder, "README.md"))` writes it.
    """
    folder = os.fspath(model_folder)
    if eval_results_json is None and os.path.isfile(os.path.join(folder, "eval_results.json")):
        eval_results_json = os.path.join(folder, "eval_results.json")
    repo_id = repo_id or f"<user>/{os.path.basename(os.path.abspath(folder))}"
    model_name = model_name or repo_id.split("/")[-1]
    info = describe_checkpoint(folder)
    base = _load_card(base_card)
    base_data = base.data.to_dict() if base is not None else {}

    loaded = None
    if eval_results_json is not None:
        loaded = (
            [_load_json(s) for s in eval_results_json]
            if not isinstance(eval_results_json, (str, os.PathLike, Mapping))
            else _load_json(eval_results_json)
        )
    source_url = f"https://huggingface.co/{repo_id}/blob/main/eval_results.json" if "<" not in repo_id else None
    results = eval_results_from_json(loaded, dataset_id, source_url) if loaded is not None else []
    if include_base_results and base is not None and base.data.eval_results:
        results = list(base.data.eval_results) + results

    tags = list(dict.fromkeys(_as_list(base_data.get("tags")) + DEFAULT_TAGS))
    base_models = _as_list(base_data.get("base_model")) or PRESET_BASE_MODELS.get(info["preset"], [])
    card_data = ModelCardData(
        license=base_data.get("license", license),
        library_name="transformers",
        pipeline_tag=base_data.get("pipeline_tag", PIPELINE_TAG),
        tags=tags,
        datasets=list(datasets) if datasets is not None else (_as_list(base_data.get("datasets")) or None),
        base_model=base_models or None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )

    steps = ""
    if isinstance(loaded, Mapping) and "global_step" in loaded:
        steps = f" after {loaded['global_step']} training steps"
    table = _results_table(loaded)
    evaluation = [
        "## Evaluation results (this checkpoint)",
        "",
        (
            f"Measured on this checkpoint{steps} with `instap_eval` (zero-shot; dual encoder, and re-ranked by the "
            "matching head over the top k). These are the numbers in the `model-index` above; they are not the "
            "paper's.\n\n" + table
        )
        if table
        else "No evaluation results were given when this card was generated.",
    ]

    parts: list[str] = []
    base_sections = _sections(base.text) if base is not None else []
    # The base card's introduction and model description are about its own model (e.g. InstAP-L and the paper's
    # numbers): this checkpoint gets its own, and the base card contributes its general sections.
    kept = [text for title, text in base_sections if title and not title.startswith(REGENERATED_SECTIONS)]
    parts.append(
        f"# {model_name}\n\nAn InstAP video-language model (instance-aware video-language pre-training on a UMT "
        f"backbone; [paper]({PAPER_URL})), preset `{info['preset']}`: a video encoder and a text encoder aligned in "
        "a shared space, a fusion encoder with a matching head, and an attention pool for instance (region or "
        "region-track) embeddings."
    )
    generated = (
        "This card was generated from the checkpoint's configuration and weights by "
        f"`instap_train.model_card.generate_model_card` (repository `{repo_id}`)."
    )
    if kept:
        generated += (
            " The sections after \"How to use\" come from a base card and describe the InstAP method and the "
            "paper's setting; numbers there are the paper's, not this checkpoint's."
        )
    parts.append(generated)
    parts.append(_details_markdown(info))
    parts.append("\n".join(evaluation))
    parts.append(usage_markdown(repo_id).strip())
    parts += kept
    if not any(title.startswith("Citation") for title, _ in base_sections):
        parts.append("## Citation\n\n```bibtex\n" + CITATION + "\n```")
    body = "\n\n".join(part.strip() for part in parts) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def check_card_metadata(card: Any) -> ModelCardData:
    """Offline validation of a card's metadata: parses with `ModelCardData` (strict: a malformed `model-index`
    raises) and checks that `model-index` survives `EvalResult` parsing and re-serialisation unchanged.

    `ModelCard.validate()` does the Hub-side check but needs the network.
    """
    import yaml

    card = _load_card(card)
    text = card.content
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    if not match:
        raise ValueError("The card has no YAML metadata block.")
    raw = yaml.safe_load(match.group(1)) or {}
    data = ModelCardData(**raw)  # ignore_metadata_errors=False: raises on an unparsable model-index
    if "model-index" in raw:
        if raw["model-index"] != data.to_dict().get("model-index"):
            raise ValueError("model-index does not round-trip through huggingface_hub.EvalResult.")
        if not data.eval_results:
            raise ValueError("model-index has no results.")
    for key in ("license", "library_name", "pipeline_tag"):
        if not raw.get(key):
            raise ValueError(f"The card's metadata has no {key}.")
    return data
