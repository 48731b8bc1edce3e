"""The InstVL schema (METHOD §6) as `datasets.Features`, and one loader for every place InstVL records live.

[`load_instvl`] takes a Hub dataset id, a local folder of Parquet or WebDataset (`.tar`) shards, or a JSON/JSONL
annotation file with a media root, and returns a `datasets.IterableDataset` (or a `datasets.Dataset` with
`streaming=False`) whose records all look the same:

    {"id": str, "media_type": "image" | "video", "media": bytes | str (absolute path), "caption": str,
     "instances": [{"category": str, "caption": str, "frame_index": [int], "boxes": [[x1, y1, x2, y2]]}]}

Media are never decoded here (no `datasets.Video()`/`Image()` features): decoding happens per sample in DataLoader
workers (`streaming.py`).

Distributed training
--------------------
- Custom loops (plain PyTorch / `accelerate` without `prepare` on the DataLoader): give each rank its part with
  `load_instvl(..., rank=rank, world_size=world_size)`, which calls `datasets.distributed.split_dataset_by_node`.
  With `num_shards % world_size == 0` each rank reads whole shards; otherwise every rank reads everything and keeps
  1/world_size of the records.
- HF `Trainer` with a `datasets.IterableDataset`: accelerate shards the stream itself (with
  `accelerator_config={"dispatch_batches": False}`); do not also split by node, the double split silently drops
  data. See `streaming.py` for the DataLoader side.
Make the number of shards a multiple of `world_size * num_workers` so that no rank or worker idles.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
from datasets import Features, List, Value

from .errors import InstVLSampleError
from .records import parse_record

__all__ = [
    "INSTVL_FEATURES",
    "INSTVL_PATH_FEATURES",
    "INSTVL_SPLITS",
    "INSTVL_TEST_SPLITS",
    "MEDIA_EXTENSIONS",
    "find_split_files",
    "instvl_features",
    "iter_json_records",
    "iter_webdataset_records",
    "load_instvl",
]

logger = logging.getLogger(__name__)

INSTVL_TEST_SPLITS = ("img_1k", "img_10k", "img_zero_1k", "img_zero_10k", "video_1k")
INSTVL_SPLITS = ("train", *INSTVL_TEST_SPLITS)

# File extensions of the media member of a WebDataset sample.
MEDIA_EXTENSIONS = {
    "image": ("jpg", "jpeg", "png", "webp", "bmp"),
    "video": ("mp4", "webm", "mkv", "avi", "mov"),
}


def instvl_features(media: str = "bytes") -> Features:
    """The InstVL schema as `datasets.Features`.

    Args:
        media (`str`, *optional*, defaults to `"bytes"`): `"bytes"` stores encoded media in the records
            (`Value("binary")`); `"path"` stores a path relative to the data root (`Value("string")`).
    """
    if media not in ("bytes", "path"):
        raise ValueError(f"media must be 'bytes' or 'path', got {media!r}")
    return Features(
        {
            "id": Value("string"),
            "media_type": Value("string"),
            "media": Value("binary") if media == "bytes" else Value("string"),
            "caption": Value("string"),
            "instances": List(
                {
                    "category": Value("string"),
                    "caption": Value("string"),
                    "frame_index": List(Value("int32")),
                    "boxes": List(List(Value("float32"), length=4)),
                }
            ),
        }
    )


INSTVL_FEATURES = instvl_features("bytes")
INSTVL_PATH_FEATURES = instvl_features("path")


def resolve_media_path(media: Any, media_root: str | None, *, sample_id: Any = None) -> Any:
    """A relative media path joined to `media_root`; bytes and `None` as they are.

    With a root, the resolved path (symbolic links followed) must lie inside it: `../outside/secret.mp4` or an
    absolute path elsewhere raises [`InstVLSampleError`] (reason `unsafe_media_path`), so that annotations cannot make
    a run read files outside its data.
    """
    if not isinstance(media, str) or media_root is None:
        return media
    root = os.path.realpath(media_root)
    path = os.path.realpath(os.path.join(root, media))
    if os.path.commonpath([root, path]) != root:
        raise InstVLSampleError(
            f"media path {media!r} resolves outside the data root {media_root!r}",
            sample_id=None if sample_id is None else str(sample_id),
            field="media",
            reason="unsafe_media_path",
        )
    return path


class _ResolveMediaPaths:
    """`map` function joining relative media paths to the media root (picklable, for DataLoader workers); a path
    that escapes the root turns the row into an error placeholder (`prepare_example` raises it)."""

    def __init__(self, media_root: str) -> None:
        self.media_root = media_root

    def __call__(self, record: dict) -> dict:
        try:
            media = resolve_media_path(record.get("media"), self.media_root, sample_id=record.get("id"))
            return {"media": media, "_error": None, "_error_field": None, "_error_reason": None}
        except InstVLSampleError as error:
            return {"media": None, "_error": error.detail, "_error_field": error.field, "_error_reason": error.reason}


def iter_json_records(paths: Sequence[str], media_root: str | None = None) -> Iterator[dict]:
    """Records of JSON Lines files (one record per line) or JSON files (a list of records, or `{"data": [...]}`).

    Records are passed through as read (a malformed record is reported, with its id, when the sample is prepared);
    only relative media paths are joined to `media_root` (default: the folder of the annotation file).
    """
    for path in paths:
        root = media_root if media_root is not None else os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            if path.endswith(".jsonl"):
                rows: Any = _json_lines(handle, path)
            else:
                rows = json.load(handle)
                if isinstance(rows, dict):
                    rows = rows.get("data", rows.get("records", []))
                rows = ((f"{os.path.basename(path)}[{i}]", row) for i, row in enumerate(rows))
            for where, row in rows:
                if isinstance(row, dict) and "_error" not in row:
                    try:
                        row = dict(row, media=resolve_media_path(row.get("media"), root, sample_id=row.get("id")))
                    except InstVLSampleError as error:
                        row = _bad_row(str(row.get("id", where)), error.detail, error.field, error.reason)
                elif not isinstance(row, dict):
                    # Kept as a bad sample (counted and reported with where it is) instead of ending the split.
                    row = _bad_row(where, f"a record must be a JSON object, got {type(row).__name__}")
                yield row


def _json_lines(handle, path: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        where = f"{os.path.basename(path)}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:  # e.g. a file truncated mid-line
            yield where, _bad_row(where, f"line {number} of {path} is not valid JSON ({error.msg})")


def _bad_row(sample_id: str, detail: str, field: str | None = None, reason: str = "malformed_record") -> dict:
    """A placeholder record for an unreadable row: `prepare_example` raises it as an `InstVLSampleError`."""
    return {"id": sample_id, "_error": detail, "_error_field": field, "_error_reason": reason}


def arrow_safe_record(row: Any) -> dict:
    """`row` as a record with InstVL's column types (what a map-style `datasets.Dataset` needs), or, when it is
    malformed (a caption that is a number, boxes that are not numbers, ...), a placeholder that carries the error.

    Without this one malformed row raised an Arrow type error that lost the whole split.
    """
    # Every row gets every column (`Dataset.from_list` takes its columns from the first row).
    empty = {"media_type": None, "media": None, "caption": None, "instances": None}
    if isinstance(row, dict) and "_error" in row:
        return {**empty, **row, "id": str(row.get("id"))}
    try:
        record = parse_record(row, require_caption=False)
    except InstVLSampleError as error:
        sample_id = error.sample_id if error.sample_id is not None else str(row.get("id") if isinstance(row, dict) else None)
        return {**empty, **_bad_row(str(sample_id), error.detail, error.field, error.reason)}
    return {
        "_error": None,
        "_error_field": None,
        "_error_reason": None,
        "id": record.id,
        "media_type": record.media_type,
        "media": record.media,
        "caption": record.caption,
        "instances": [
            {
                "caption": instance.caption,
                "category": instance.category,
                "frame_index": [int(index) for index in instance.frame_index],
                "boxes": [[float(v) for v in box] for box in instance.boxes],
            }
            for instance in record.instances
        ],
    }


def iter_webdataset_records(shards: Sequence[str]) -> Iterator[dict]:
    """Records of WebDataset tar shards: per sample key a `.json` member (every field but `media`) and one media
    member (`.mp4`, `.jpg`, ...), whose bytes become `media`."""
    for shard in shards:
        with tarfile.open(shard, mode="r|*") as archive:
            current_key, members = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                directory, name = os.path.split(member.name)
                key, _, extension = name.partition(".")
                key = os.path.join(directory, key)
                if key != current_key and current_key is not None:
                    yield _webdataset_record(current_key, members, shard)
                    members = {}
                current_key = key
                members[extension.lower()] = archive.extractfile(member).read()
            if current_key is not None:
                yield _webdataset_record(current_key, members, shard)


def _webdataset_record(key: str, members: dict[str, bytes], shard: str) -> dict:
    record: dict[str, Any] = {}
    if "json" in members:
        try:
            record = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            # Keep the sample (so that it is counted and reported as bad) rather than stopping the whole stream.
            record = {"id": key, "_error": f"unreadable json member in {shard}: {error}"}
    record.setdefault("id", key)
    for extension, data in members.items():
        if extension == "json":
            continue
        for media_type, extensions in MEDIA_EXTENSIONS.items():
            if extension in extensions:
                record.setdefault("media_type", media_type)
                record["media"] = data
        if extension in ("txt", "caption") and "caption" not in record:
            record["caption"] = data  # bytes: decoded (and checked for UTF-8) when the sample is prepared
    return record


def find_split_files(root: str, split: str, extensions: Sequence[str]) -> list[str]:
    """Shard files of `split` under `root`, in the layouts `data/{split}-*.ext` (Hub), `{split}/*.ext` and
    `{split}-*.ext` / `{split}.ext`."""
    files: list[str] = []
    for extension in extensions:
        for pattern in (
            f"data/{split}-*.{extension}",
            f"data/{split}.{extension}",
            f"{split}/*.{extension}",
            f"{split}/**/*.{extension}",
            f"{split}-*.{extension}",
            f"{split}.{extension}",
            f"**/{split}-*.{extension}",
        ):
            files.extend(glob.glob(os.path.join(root, pattern), recursive=True))
    return sorted(dict.fromkeys(os.path.abspath(f) for f in files))


def load_instvl(
    source: str | os.PathLike,
    split: str = "train",
    *,
    media_root: str | os.PathLike | None = None,
    streaming: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle_seed: int | None = None,
    shuffle_buffer_size: int = 1000,
    **load_dataset_kwargs: Any,
) -> datasets.IterableDataset | datasets.Dataset:
    """Loads one split of an InstVL-schema data set.

    Args:
        source (`str` or `os.PathLike`):
            - a JSON (`.json`) or JSON Lines (`.jsonl`) annotation file, whose `media` fields are paths relative to
              `media_root`;
            - a local folder holding Parquet shards (`data/{split}-00000-of-00004.parquet`, `{split}/*.parquet`,
              ...), WebDataset shards (`{split}-000000.tar`, ...) or `{split}.jsonl`;
            - otherwise a Hub dataset id, read with `load_dataset(source, split=split, streaming=True)`.
        split (`str`, *optional*, defaults to `"train"`): one of [`INSTVL_SPLITS`] (or any split of the source).
        media_root (`str`, *optional*): folder that relative media paths are relative to (default: the folder of the
            annotation file or of the data set).
        streaming (`bool`, *optional*, defaults to `True`): return a `datasets.IterableDataset`. With `False`, a
            map-style `datasets.Dataset` (Parquet and Hub sources only).
        rank, world_size (`int`, *optional*): split the stream by node with `split_dataset_by_node` (custom loops
            only; with HF Trainer leave them unset, accelerate shards).
        shuffle_seed (`int`, *optional*): shuffle shards and a buffer of `shuffle_buffer_size` records with this
            seed (the same on every rank, as `split_dataset_by_node` requires).
        load_dataset_kwargs: passed to `datasets.load_dataset` (e.g. `revision`, `token`, `data_dir`).
    """
    source = os.fspath(source)
    media_root = os.fspath(media_root) if media_root is not None else None
    dataset: datasets.IterableDataset | datasets.Dataset

    if os.path.isfile(source) and source.endswith((".json", ".jsonl")):
        dataset = _from_records(iter_json_records, {"paths": [source], "media_root": media_root}, streaming)
    elif os.path.isdir(source):
        root = source
        parquet_files = find_split_files(root, split, ["parquet"])
        tar_files = find_split_files(root, split, ["tar"])
        json_files = find_split_files(root, split, ["jsonl", "json"])
        if parquet_files:
            dataset = datasets.load_dataset(
                "parquet",
                data_files={split: parquet_files},
                split=split,
                streaming=streaming,
                **load_dataset_kwargs,
            )
        elif tar_files:
            dataset = _from_records(iter_webdataset_records, {"shards": tar_files}, streaming)
        elif json_files:
            dataset = _from_records(
                iter_json_records, {"paths": json_files, "media_root": media_root or root}, streaming
            )
        else:
            raise FileNotFoundError(
                f"No Parquet, WebDataset or JSON(L) files for split {split!r} under {root!r} (looked for "
                f"data/{split}-*.parquet, {split}/*.parquet, {split}-*.tar, {split}.jsonl, ...)."
            )
        if parquet_files:
            dataset = _resolve_paths_if_needed(dataset, media_root or root)
    else:
        dataset = datasets.load_dataset(source, split=split, streaming=streaming, **load_dataset_kwargs)
        if media_root is not None:
            dataset = _resolve_paths_if_needed(dataset, media_root)

    if shuffle_seed is not None:
        if isinstance(dataset, datasets.IterableDataset):
            dataset = dataset.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer_size)
        else:
            dataset = dataset.shuffle(seed=shuffle_seed)
    if world_size is not None and world_size > 1:
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=int(rank or 0), world_size=int(world_size))
    return dataset


def _from_records(generator, gen_kwargs: dict, streaming: bool):
    # No `features`: records pass through unchanged, so that a malformed one reaches the sample checks (which name
    # its id and field) instead of failing an Arrow cast that would stop the whole stream.
    if streaming:
        # Every list in gen_kwargs is a list of shards: `datasets` splits them between ranks and workers.
        return datasets.IterableDataset.from_generator(generator, gen_kwargs=gen_kwargs)
    # Map-style from JSON or tar: Arrow columns need one type each, so malformed rows become error placeholders.
    return datasets.Dataset.from_list([arrow_safe_record(row) for row in generator(**gen_kwargs)])


def _resolve_paths_if_needed(dataset, media_root: str):
    features = dataset.features
    if features is not None and "media" in features and features["media"] == Value("binary"):
        return dataset
    return dataset.map(_ResolveMediaPaths(media_root))
