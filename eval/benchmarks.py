# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot retrieval benchmarks from local files (METHOD §5): MSR-VTT, DiDeMo, MSVD, LSMDC, ActivityNet, and
any InstVL split (global and instance retrieval).

Benchmark annotation format
---------------------------
A JSON file holding a list (or ``{"data": [...]}``), or a JSON Lines file with one object a line::

    [
      {"video": "videos/video7010.mp4", "caption": "a man is singing on stage"},
      {"video": "videos/video7011.mp4", "caption": ["a dog runs", "a puppy plays in the grass"]},
      ...
    ]

* ``video``: a path relative to the media root (``--media_root``; default: the annotation file's folder), or an
  absolute path. Images (``.jpg``, ``.png``, ...) are 1-frame clips; an optional ``"media_type"`` field
  (``"image"``/``"video"``) overrides the guess from the extension.
* ``caption``: one caption or a list of captions. Several captions for a video (MSVD, the MSR-VTT 7K/9K style
  files, or one entry per caption repeating the same ``video``) become several text queries sharing that video:
  the ground truth is the video index of each text, and a video query is correct when it ranks any of its texts
  first (best-ranked correct item counts).
* Paragraph benchmarks (DiDeMo, ActivityNet captions; ``paragraph=True`` / ``--paragraph``): the captions of a
  video are joined with spaces, in order, into one paragraph, one text per video, tokenized to 64 tokens.

Videos are decoded with `instap_processing.decode_media` (``"middle"`` frame of each of ``T`` equal segments,
METHOD §4.4) and processed by the model's `InstAPProcessor` without augmentation (whole frame resized).

Memory
------
Frames are never held for a whole large split. `CachedBatches` decodes a batch at a time (optionally in DataLoader
workers) and keeps decoded batches in memory only up to ``cache_bytes`` (default 2 GiB); the re-ranking pass of
`zero_shot_retrieval`, which walks the videos a second time, takes cached batches from memory and decodes the others
again. A split whose frames fit in the budget (e.g. a 1K-image split, or 1K videos at 8 x 64² px) is thus decoded
once; MSR-VTT 1K at 16 x 224² (~9.6 MB of float32 per video) keeps ~200 videos and decodes the rest twice.

Bad media
---------
A benchmark whose videos are missing is not comparable to published numbers, so missing files raise (listing
them) unless ``skip_missing=True``, which drops those videos and their texts with a warning (the counts are in
the result). A file that exists but cannot be decoded raises `InstVLSampleError` naming it. InstVL splits are read
with ``skip_bad_samples=False`` for the same reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from instap_processing.decoding import IMAGE_EXTENSIONS, decode_media
from instap_processing.errors import InstVLSampleError
from instap_processing.records import decode_caption
from instap_processing.streaming import MediaTypeBatchSampler

from .retrieval import chance_mean_recall
from .zero_shot import NoInstancesError, RetrievalResult, backbone_of, instance_retrieval, zero_shot_retrieval

__all__ = [
    "BENCHMARKS",
    "DEFAULT_CACHE_BYTES",
    "PARAGRAPH_MAX_TEXT_LENGTH",
    "CachedBatches",
    "RetrievalBenchmark",
    "evaluate_benchmark",
    "evaluate_instvl_split",
    "format_results_table",
    "results_rows",
    "is_benchmark_file",
    "load_benchmark_json",
    "media_batches",
    "result_to_dict",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 << 30
PARAGRAPH_MAX_TEXT_LENGTH = 64

# The zero-shot benchmarks of METHOD §5 and whether they are paragraph-to-video (captions joined per video).
BENCHMARKS: dict[str, dict[str, bool]] = {
    "msrvtt": {"paragraph": False},
    "didemo": {"paragraph": True},
    "msvd": {"paragraph": False},
    "lsmdc": {"paragraph": False},
    "activitynet": {"paragraph": True},
}


# --------------------------------------------------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalBenchmark:
    """A video-text retrieval benchmark: the videos (grouped by media type), the texts and the ground truth.

    Attributes:
        videos: media sources (absolute paths, or bytes), one per video; images first, then videos.
        media_types: ``"image"`` or ``"video"`` for each entry of ``videos``.
        video_ids: the annotation's ``video`` value of each video (for reports).
        texts: every text query, in annotation order.
        text_to_video: the index in ``videos`` of each text's video.
        num_missing: videos dropped because their file was missing (``skip_missing=True``).
    """

    videos: list[Any]
    media_types: list[str]
    video_ids: list[str]
    texts: list[str]
    text_to_video: list[int]
    paragraph: bool = False
    num_missing: int = 0

    def __post_init__(self) -> None:
        if len(self.videos) != len(self.media_types) or len(self.videos) != len(self.video_ids):
            raise ValueError("videos, media_types and video_ids must have the same length.")
        if len(self.texts) != len(self.text_to_video):
            raise ValueError("texts and text_to_video must have the same length.")
        if not self.videos or not self.texts:
            raise ValueError("A retrieval benchmark needs at least one video and one text.")
        if set(self.text_to_video) != set(range(len(self.videos))):
            raise ValueError("Every video needs at least one text, and every text a valid video index.")


def _read_entries(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        data = json.load(handle)
    if isinstance(data, Mapping):
        data = data.get("data", data.get("annotations"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{'video': ..., 'caption': ...}} objects (or {{'data': [...]}}).")
    return data


def is_benchmark_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a benchmark annotation file (entries with ``video``) rather than InstVL records
    (``media``/``media_type``)."""
    path = os.fspath(path)
    if not (os.path.isfile(path) and path.endswith((".json", ".jsonl"))):
        return False
    try:
        entries = _read_entries(path)
    except ValueError:  # not JSON, or not a list of records
        return False
    first = entries[0] if entries else {}
    return isinstance(first, Mapping) and "video" in first and "media" not in first


def _media_type_of(entry: Mapping, video: str) -> str:
    media_type = entry.get("media_type")
    if media_type is None:
        media_type = "image" if video.lower().endswith(IMAGE_EXTENSIONS) else "video"
    if media_type not in ("image", "video"):
        raise ValueError(f"media_type of {video!r} must be 'image' or 'video', got {media_type!r}.")
    return media_type


def load_benchmark_json(
    path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    *,
    paragraph: bool = False,
    skip_missing: bool = False,
) -> RetrievalBenchmark:
    """Reads a benchmark annotation file (format in the module docstring).

    Args:
        path: the ``.json``/``.jsonl`` annotation file.
        media_root: folder that ``video`` paths are relative to (default: the annotation file's folder).
        paragraph: join each video's captions into one paragraph (DiDeMo, ActivityNet).
        skip_missing: drop videos whose file does not exist (with their texts) instead of raising.
    """
    path = os.fspath(path)
    root = os.fspath(media_root) if media_root is not None else os.path.dirname(os.path.abspath(path))
    captions_of: dict[str, list[str]] = {}
    media_type_of: dict[str, str] = {}
    for position, entry in enumerate(_read_entries(path)):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("video"), str) or "caption" not in entry:
            raise ValueError(f"{path}: entry {position} must be an object with a 'video' path and a 'caption'.")
        video = entry["video"]
        raw = entry["caption"]
        raw = [raw] if isinstance(raw, (str, bytes)) else list(raw)
        if not raw:
            raise ValueError(f"{path}: entry {position} ({video!r}) has no caption.")
        captions = [decode_caption(caption, sample_id=video, field="caption") for caption in raw]
        captions_of.setdefault(video, []).extend(captions)
        media_type_of.setdefault(video, _media_type_of(entry, video))

    resolved = {video: video if os.path.isabs(video) else os.path.join(root, video) for video in captions_of}
    missing = [video for video, file in resolved.items() if not os.path.isfile(file)]
    if missing and not skip_missing:
        shown = ", ".join(repr(resolved[video]) for video in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(resolved)} media files of {path} are missing (e.g. {shown}); check --media_root, "
            "or pass skip_missing=True / --skip_missing to drop them (results are then not comparable)."
        )
    if missing:
        logger.warning("Dropping %d of %d videos whose files are missing (and their texts).", len(missing), len(resolved))
    missing_set = set(missing)
    # Images first, then videos (batches hold one media type); annotation order within each type.
    kept = [video for video in captions_of if video not in missing_set]
    order = sorted(kept, key=lambda video: media_type_of[video] != "image")
    index_of = {video: index for index, video in enumerate(order)}

    texts, text_to_video = [], []
    for video, captions in captions_of.items():  # annotation order for the texts
        if video in missing_set:
            continue
        if paragraph:
            texts.append(" ".join(captions))
            text_to_video.append(index_of[video])
        else:
            texts.extend(captions)
            text_to_video.extend([index_of[video]] * len(captions))
    if not order:
        raise ValueError(f"{path}: no usable video.")
    return RetrievalBenchmark(
        videos=[resolved[video] for video in order],
        media_types=[media_type_of[video] for video in order],
        video_ids=order,
        texts=texts,
        text_to_video=text_to_video,
        paragraph=paragraph,
        num_missing=len(missing),
    )


# --------------------------------------------------------------------------------------------------------------------
# Batches decoded on the fly, with a bounded cache
# --------------------------------------------------------------------------------------------------------------------


def _nbytes(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, Mapping):
        return sum(_nbytes(value) for value in batch.values())
    return 0


def evaluation_batches(media_types: Sequence[str], batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` that never mix media types, each type in index order (images first):
    the training sampler's grouping (`MediaTypeBatchSampler`) without shuffling or dropping."""
    return list(MediaTypeBatchSampler(media_types, batch_size, shuffle=False, drop_last=False))


class CachedBatches:
    """A callable returning a fresh iterator over the batches of a data set, decoded on the fly.

    Every call walks ``batches`` in order. Batches are built by a ``DataLoader`` (``collate_fn`` decodes and
    processes; ``num_workers`` processes decode in parallel). The first batches, up to ``cache_bytes`` of tensors in
    all, are kept in memory and served from there on later calls; the others are decoded again on each call. So a
    small split is decoded once and a large one costs one extra decode per pass instead of all its frames in memory.

    Args:
        dataset: a map-style data set whose items ``collate_fn`` turns into a batch.
        batches: index lists, one per batch, in the order to yield them.
        collate_fn: list of items -> batch (a tensor, or a dict of tensors).
        num_workers: DataLoader workers.
        cache_bytes: memory budget of the cache (0 disables it).
    """

    def __init__(
        self,
        dataset: Dataset,
        batches: Sequence[Sequence[int]],
        collate_fn: Callable[[list[Any]], Any],
        *,
        num_workers: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.dataset = dataset
        self.batches = [list(batch) for batch in batches]
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, Any] = {}
        self._cached_bytes = 0
        self.num_decoded_batches = 0  # batches built so far, over all calls (for tests and reports)

    def __len__(self) -> int:
        return len(self.batches)

    def _loader(self, batch_ids: list[int]) -> Iterator[Any]:
        if not batch_ids:
            return iter(())
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=[self.batches[i] for i in batch_ids],
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
            )
        )

    def __call__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        missing = [i for i in range(len(self.batches)) if i not in self._cache]
        loader = self._loader(missing)
        for index in range(len(self.batches)):
            if index in self._cache:
                yield self._cache[index]
                continue
            batch = next(loader)
            self.num_decoded_batches += 1
            size = _nbytes(batch)
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = batch
                self._cached_bytes += size
            yield batch


class _MediaDataset(Dataset):
    """Decodes one benchmark video (``middle`` sampling) per item."""

    def __init__(self, videos: Sequence[Any], media_types: Sequence[str], num_frames: int) -> None:
        self.videos = list(videos)
        self.media_types = list(media_types)
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        source = self.videos[index]
        name = source if isinstance(source, str) else f"video {index}"
        try:
            return decode_media(source, self.media_types[index], num_frames=self.num_frames, sampling="middle",
                                sample_id=name)
        except InstVLSampleError as error:
            raise error.with_context(sample_id=name, field="media") from None


class _ProcessFrames:
    """Collate function: decoded clips -> ``pixel_values`` with the evaluation transform (picklable)."""

    def __init__(self, video_processor) -> None:
        self.video_processor = video_processor

    def __call__(self, decoded: list) -> torch.Tensor:
        return self.video_processor(decoded, do_train_augment=False, return_tensors="pt")["pixel_values"]


def media_batches(
    videos: Sequence[Any],
    media_types: Sequence[str],
    processor,
    *,
    num_frames: int,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> CachedBatches:
    """`CachedBatches` of ``pixel_values`` for a list of media, one media type per batch (images first, see
    `evaluation_batches`: the clips come out in the order of ``[i for batch in result.batches for i in batch]``)."""
    return CachedBatches(
        _MediaDataset(videos, media_types, num_frames),
        evaluation_batches(media_types, batch_size),
        _ProcessFrames(processor.video_processor),
        num_workers=num_workers,
        cache_bytes=cache_bytes,
    )


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def _default_num_frames(model, processor) -> int:
    frames = getattr(processor.video_processor, "num_frames", None)
    if frames:
        return int(frames)
    return int(backbone_of(model).config.vision_config.num_frames)


def result_to_dict(result: RetrievalResult) -> dict[str, Any]:
    """The metrics of a `RetrievalResult` as plain JSON-able dicts (no score matrices)."""
    output: dict[str, Any] = {"dual_encoder": dict(result.metrics_dual)}
    if result.metrics_rerank is not None:
        output["reranked"] = dict(result.metrics_rerank)
    output["timings"] = dict(result.timings)
    return output


def evaluate_benchmark(
    model,
    processor,
    benchmark: RetrievalBenchmark,
    *,
    num_frames: int | None = None,
    k: int = 128,
    rerank: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    max_text_length: int | None = None,
    fusion_batch_size: int = 256,
    rerank_score: str = "positive_logit",
) -> dict[str, Any]:
    """Global zero-shot retrieval on a `RetrievalBenchmark` (dual encoder, then matching-head re-ranking).

    Returns ``{"global": {"dual_encoder": metrics, "reranked": metrics, "timings": ...}, "num_videos", "num_texts",
    "num_missing", "num_frames", "max_text_length", "k"}``.
    """
    num_frames = num_frames or _default_num_frames(model, processor)
    if max_text_length is None:
        max_text_length = PARAGRAPH_MAX_TEXT_LENGTH if benchmark.paragraph else processor.max_length
    tokens = processor.tokenize(benchmark.texts, max_text_length)
    videos = media_batches(
        benchmark.videos, benchmark.media_types, processor, num_frames=num_frames, batch_size=batch_size,
        num_workers=num_workers, cache_bytes=cache_bytes,
    )
    # Rows of the score matrix follow the batches (one media type each); map the ground truth onto that order.
    row_of = {index: row for row, index in enumerate(i for batch in videos.batches for i in batch)}
    text_to_video = torch.tensor([row_of[video] for video in benchmark.text_to_video])
    start = time.perf_counter()
    result = zero_shot_retrieval(
        model, videos, tokens["input_ids"], tokens["attention_mask"], text_to_video,
        k=k, rerank=rerank, fusion_batch_size=fusion_batch_size, rerank_score=rerank_score,
    )
    return {
        "global": result_to_dict(result),
        "num_videos": len(benchmark.videos),
        "num_texts": len(benchmark.texts),
        "num_missing": benchmark.num_missing,
        "num_frames": num_frames,
        "max_text_length": max_text_length,
        "k": k,
        "rerank_score": rerank_score,
        "seconds": time.perf_counter() - start,
        "decoded_batches": videos.num_decoded_batches,
        "batches": len(videos),
    }


def _caption_column(records) -> list[tuple[str, Any]]:
    """``(id, caption)`` of every record without touching the media column."""
    if hasattr(records, "select_columns"):
        columns = records.select_columns(["id", "caption"])
        return list(zip(columns["id"], columns["caption"]))
    return [(record.get("id"), record.get("caption")) for record in records]


def evaluate_instvl_split(
    model,
    processor,
    source: str,
    split: str,
    *,
    media_root: str | None = None,
    num_frames: int | None = None,
    k: int = 128,
    rerank: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    instances: bool = True,
    use_attention_pool: bool = True,
    max_samples: int | None = None,
    fusion_batch_size: int = 256,
    rerank_score: str = "positive_logit",
) -> dict[str, Any]:
    """Global and instance retrieval on one InstVL split (METHOD §5, Table 1).

    Global: each scene caption against every clip of the split. Instance: each instance crop against every instance
    caption of the split; InstAP scores a crop through the attention pool with its scene (``use_attention_pool``),
    ``use_attention_pool=False`` scores the crop alone, as global-only models (UMT) are evaluated.

    Returns ``{"global": {...}, "instance": {...} (when the split has instances), "num_videos", "num_texts",
    "num_instances", ...}``.
    """
    from instap_processing.collator import InstAPDataCollator
    from instap_processing.instvl import load_instvl
    from instap_processing.streaming import InstVLMapDataset

    num_frames = num_frames or _default_num_frames(model, processor)
    records = load_instvl(source, split, media_root=media_root, streaming=False)
    if max_samples is not None:
        records = records.select(range(min(len(records), max_samples)))
    dataset = InstVLMapDataset(
        records, num_frames=num_frames, training=False, max_instances_per_sample=None, skip_bad_samples=False,
        load_instances=instances,
    )
    batches = evaluation_batches(dataset.media_types, batch_size)
    order = [index for batch in batches for index in batch]
    id_captions = _caption_column(records)
    captions = [decode_caption(id_captions[i][1], sample_id=str(id_captions[i][0]), field="caption") for i in order]
    tokens = processor.tokenize(captions)
    split_batches = CachedBatches(
        dataset,
        batches,
        InstAPDataCollator(processor, text=True, instances=instances, training=False),
        num_workers=num_workers,
        cache_bytes=cache_bytes,
    )

    def pixel_batches() -> Iterator[torch.Tensor]:
        return (batch["pixel_values"] for batch in split_batches())

    start = time.perf_counter()
    global_result = zero_shot_retrieval(
        model, pixel_batches, tokens["input_ids"], tokens["attention_mask"], torch.arange(len(order)),
        k=k, rerank=rerank, fusion_batch_size=fusion_batch_size, rerank_score=rerank_score,
    )
    output: dict[str, Any] = {
        "global": {**result_to_dict(global_result), "chance_r_mean": chance_mean_recall(len(order))},
        "num_videos": len(order),
        "num_texts": len(order),
        "num_frames": num_frames,
        "k": k,
        "rerank_score": rerank_score,
    }
    if instances:
        try:
            instance_result = instance_retrieval(
                model, split_batches, k=k, rerank=rerank, use_attention_pool=use_attention_pool,
                fusion_batch_size=fusion_batch_size, rerank_score=rerank_score,
            )
        except NoInstancesError:
            logger.warning("Split %r has no instances: instance retrieval skipped.", split)
        else:
            num_instances = int(instance_result.scores_dual.shape[0])
            output["instance"] = {**result_to_dict(instance_result), "chance_r_mean": chance_mean_recall(num_instances)}
            output["num_instances"] = num_instances
            output["attention_pool"] = use_attention_pool
    output["seconds"] = time.perf_counter() - start
    output["decoded_batches"] = split_batches.num_decoded_batches
    output["batches"] = len(split_batches)
    return output


# --------------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------------

SCORINGS = (("dual_encoder", "dual encoder"), ("reranked", "re-ranked"))  # result key, row label
TABLE_COLUMNS = (
    ("T2V R@1", "t2v_r1"), ("T2V R@5", "t2v_r5"), ("T2V R@10", "t2v_r10"), ("T2V mean", "t2v_r_mean"),
    ("V2T R@1", "v2t_r1"), ("V2T R@5", "v2t_r5"), ("V2T R@10", "v2t_r10"), ("V2T mean", "v2t_r_mean"),
    ("mean R", "r_mean"),
)


def results_rows(evaluations: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, str, Mapping[str, float]]]:
    """`(evaluation name, part, scoring key, metrics)` of every row of ``{name: evaluation}``, the results schema of
    `evaluate_benchmark`/`evaluate_instvl_split` (``{"global"|"instance": {"dual_encoder"|"reranked": metrics,
    "chance_r_mean": ...}}``), which `run_align.py`'s `eval_results.json` and ``python -m instap_eval`` write."""
    for name, evaluation in evaluations.items():
        for part in ("global", "instance"):
            for key, _ in SCORINGS:
                metrics = evaluation.get(part, {}).get(key)
                if isinstance(metrics, Mapping):
                    yield name, part, key, metrics


def format_results_table(evaluations: Mapping[str, Mapping[str, Any]]) -> str:
    """The markdown table of ``{name: evaluation}``: one row per part and scoring, a chance column when the
    evaluations give one (InstVL splits), "n/a" for a missing or non-finite value."""
    rows = list(results_rows(evaluations))
    with_chance = any("chance_r_mean" in evaluations[name][part] for name, part, _, _ in rows)
    header = ["evaluation", *(title for title, _ in TABLE_COLUMNS)] + (["chance mean R"] if with_chance else [])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    labels = dict(SCORINGS)
    for name, part, key, metrics in rows:
        cells = [_cell(metrics.get(key)) for _, key in TABLE_COLUMNS]
        if with_chance:
            cells.append(_cell(evaluations[name][part].get("chance_r_mean")))
        lines.append(f"| {f'{name} {part}'.strip()}, {labels[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"
