"""InstVL schema and loaders: Parquet folder, WebDataset tars, JSON/JSONL + media root, Hub id; splitting by node."""

import json
import os

import datasets
import numpy as np
import pytest

import instap_processing.instvl as instvl_module
from instap_processing.instvl import INSTVL_FEATURES, INSTVL_PATH_FEATURES, INSTVL_SPLITS, load_instvl
from instap_processing.records import parse_record
from instap_processing.synthetic import SyntheticConfig, generate_split, write_dataset, write_split

NUM = {"train": 12, "video_1k": 6}


@pytest.fixture(scope="module")
def config():
    return SyntheticConfig(num_samples=dict(NUM), min_frames=6, max_frames=8)


@pytest.fixture(scope="module")
def generated(config):
    return {split: list(generate_split(split, count, config)) for split, count in NUM.items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, generated):
    """The same generated records written as Parquet, WebDataset and JSONL (4 samples per shard)."""
    root = tmp_path_factory.mktemp("instvl")
    for output_format in ("parquet", "webdataset", "jsonl"):
        for split, records in generated.items():
            write_split(str(root / output_format), split, records, len(records), output_format, shard_size=4)
    return root


def canonical(record: dict) -> dict:
    """Comparable form of a loaded record: media read to bytes, boxes as float32 (as Parquet stores them)."""
    media = record["media"]
    if isinstance(media, str):
        with open(media, "rb") as handle:
            media = handle.read()
    instances = [
        {
            "category": instance["category"],
            "caption": instance["caption"],
            "frame_index": [int(i) for i in instance["frame_index"]],
            "boxes": np.asarray(instance["boxes"], dtype=np.float32).tolist(),
        }
        for instance in record["instances"]
    ]
    return {**{k: record[k] for k in ("id", "media_type", "caption")}, "media": media, "instances": instances}


def test_schema_matches_the_method():
    assert INSTVL_SPLITS == ("train", "img_1k", "img_10k", "img_zero_1k", "img_zero_10k", "video_1k")
    assert set(INSTVL_FEATURES) == {"id", "media_type", "media", "caption", "instances"}
    assert INSTVL_FEATURES["media"] == datasets.Value("binary")
    assert INSTVL_PATH_FEATURES["media"] == datasets.Value("string")
    instance = INSTVL_FEATURES["instances"]
    assert isinstance(instance, datasets.List)
    assert set(instance.feature) == {"category", "caption", "frame_index", "boxes"}
    assert instance.feature["boxes"] == datasets.List(datasets.List(datasets.Value("float32"), length=4))


def test_synthetic_records_fit_the_schema(config):
    rows = list(generate_split("train", 4, config))
    dataset = datasets.Dataset.from_list(rows, features=INSTVL_FEATURES)
    assert dataset.features == INSTVL_FEATURES and len(dataset) == 4


@pytest.mark.parametrize("split", list(NUM))
def test_every_source_yields_the_same_records(folders, generated, split):
    expected = [canonical(r) for r in generated[split]]
    for output_format in ("parquet", "webdataset", "jsonl"):
        stream = load_instvl(folders / output_format, split)
        assert isinstance(stream, datasets.IterableDataset)
        loaded = sorted((canonical(r) for r in stream), key=lambda r: r["id"])
        assert loaded == expected, output_format
        for record in loaded:
            parse_record(record)


def test_parquet_shards_give_several_shards(folders):
    stream = load_instvl(folders / "parquet", "train")
    assert stream.num_shards == 3  # 12 samples, 4 per shard
    assert load_instvl(folders / "webdataset", "train").num_shards == 3


def test_jsonl_file_with_a_separate_media_root(folders, tmp_path):
    # Move the annotation file away from the media: relative paths resolve against media_root.
    source = folders / "jsonl" / "video_1k.jsonl"
    moved = tmp_path / "annotations.jsonl"
    moved.write_text(source.read_text())
    records = list(load_instvl(moved, media_root=folders / "jsonl"))
    assert len(records) == NUM["video_1k"] and all(os.path.isfile(r["media"]) for r in records)


def test_json_list_file(folders, tmp_path):
    rows = [json.loads(line) for line in (folders / "jsonl" / "video_1k.jsonl").read_text().splitlines()]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(rows))
    records = list(load_instvl(path, media_root=folders / "jsonl"))
    assert [r["id"] for r in records] == [r["id"] for r in rows]


def test_hub_layout_loads_with_load_dataset(tmp_path):
    # The CLI's folder is a valid Hub data set: its README's YAML maps every split (custom names too) to its shards.
    config = SyntheticConfig(num_samples={"img_zero_1k": 3, "video_1k": 2}, min_frames=4, max_frames=4)
    write_dataset(str(tmp_path), config, ["img_zero_1k", "video_1k"])
    stream = datasets.load_dataset(str(tmp_path), split="img_zero_1k", streaming=True)
    assert sorted(r["id"] for r in stream) == [f"img_zero_1k-{i:06d}" for i in range(3)]


def test_hub_id_goes_through_streaming_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, split=None, streaming=False, **kwargs):
        calls.append((path, split, streaming, kwargs))
        return datasets.IterableDataset.from_generator(lambda: iter([{"id": "x"}]))

    monkeypatch.setattr(instvl_module.datasets, "load_dataset", fake_load_dataset)
    stream = load_instvl("some-org/instvl", "img_1k", revision="abc")
    assert calls == [("some-org/instvl", "img_1k", True, {"revision": "abc"})]
    assert list(stream) == [{"id": "x"}]


def test_split_by_node_partitions_the_records(folders):
    everything = {r["id"] for r in load_instvl(folders / "parquet", "train")}
    parts = [
        {r["id"] for r in load_instvl(folders / "parquet", "train", rank=rank, world_size=3)}
        for rank in range(3)
    ]
    assert set().union(*parts) == everything
    assert sum(len(part) for part in parts) == len(everything)  # disjoint
    assert all(parts)


def test_shuffle_is_seeded(folders, monkeypatch):
    # datasets' shard interleaving sleeps 5 s when its reader threads shut down (an Arrow workaround); not under test.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    first = [r["id"] for r in load_instvl(folders / "parquet", "train", shuffle_seed=3)]
    again = [r["id"] for r in load_instvl(folders / "parquet", "train", shuffle_seed=3)]
    assert first == again and sorted(first) == sorted(
        r["id"] for r in load_instvl(folders / "parquet", "train")
    )


def test_map_style_from_parquet(folders, tmp_path):
    dataset = load_instvl(folders / "parquet", "video_1k", streaming=False, cache_dir=str(tmp_path))
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == NUM["video_1k"]
    assert dataset.features == INSTVL_FEATURES


def test_missing_split_is_a_clear_error(folders):
    with pytest.raises(FileNotFoundError, match="img_10k"):
        load_instvl(folders / "parquet", "img_10k")


def test_parquet_with_media_paths(generated, tmp_path):
    """Parquet shards whose `media` column holds paths relative to the data root (INSTVL_PATH_FEATURES)."""
    rows = []
    for record in generated["video_1k"]:
        relative = f"clips/{record['id']}.mp4"
        (tmp_path / "clips").mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes(record["media"])
        rows.append(dict(record, media=relative))
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_list(rows, features=INSTVL_PATH_FEATURES).to_parquet(
        tmp_path / "data/video_1k-0.parquet"
    )
    loaded = list(load_instvl(tmp_path, "video_1k"))
    assert [r["media"] for r in loaded] == [str(tmp_path / row["media"]) for row in rows]
    assert [canonical(r) for r in loaded] == [canonical(r) for r in generated["video_1k"]]
