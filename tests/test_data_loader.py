"""DataLoader side: decoding in workers, batches of one media type, schedules that ranks agree on, the collator."""

import itertools
import os

import pytest
import torch
from media_utils import make_tiny_tokenizer
from torch.utils.data import DataLoader

import instap_processing.streaming as streaming_module
from instap_processing import InstAPProcessor, InstAPVideoProcessor
from instap_processing.collator import InstAPDataCollator
from instap_processing.instvl import load_instvl
from instap_processing.streaming import (
    EpochAwareDataLoader,
    InstVLIterableDataset,
    InstVLMapDataset,
    MediaTypeBatchSampler,
    media_type_schedule,
    select_instances,
)
from instap_processing.synthetic import SyntheticConfig, write_dataset

BATCH = 4
CONTRACT_TYPES = {
    "pixel_values": torch.float32,
    "input_ids": torch.long,
    "attention_mask": torch.long,
    "source_ids": torch.long,
    "num_dropped_instances": torch.long,
    "num_skipped_samples": torch.long,
    "instance_pixel_values": torch.float32,
    "instance_input_ids": torch.long,
    "instance_attention_mask": torch.long,
    "instance_sample_index": torch.long,
    "instance_source_id": torch.long,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    # Whole captions in video_1k too (three sentences), for the caption sub-sampling test.
    config = SyntheticConfig(
        num_samples={"train": 48, "video_1k": 8}, min_frames=6, max_frames=10, test_caption_sentences=None
    )
    write_dataset(str(root), config, ["train", "video_1k"], shard_size=12)  # 4 train shards
    return root


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    video_processor = InstAPVideoProcessor(size={"height": 32, "width": 32}, num_frames=4, patch_size=8)
    return InstAPProcessor(
        video_processor, make_tiny_tokenizer(tmp_path_factory.mktemp("tok")), max_length=24
    )


def check_contract(batch, num_frames):
    assert set(batch) <= set(CONTRACT_TYPES)
    for key, value in batch.items():
        assert isinstance(value, torch.Tensor) and value.dtype == CONTRACT_TYPES[key], key
    assert batch["pixel_values"].shape[1:] == (num_frames, 3, 32, 32)
    if "instance_pixel_values" in batch:
        num_instances = batch["instance_pixel_values"].shape[0]
        assert batch["instance_pixel_values"].shape[1] == num_frames
        assert (
            batch["instance_input_ids"].shape[0] == batch["instance_sample_index"].shape[0] == num_instances
        )
        assert batch["instance_sample_index"].max() < batch["pixel_values"].shape[0]
        torch.testing.assert_close(
            batch["instance_source_id"], batch["source_ids"][batch["instance_sample_index"]]
        )


def test_two_workers_decode_and_batch_one_media_type(data_dir, processor, monkeypatch):
    main_pid = os.getpid()
    original = streaming_module.decode_media

    def decode_only_in_workers(*args, **kwargs):
        assert os.getpid() != main_pid, "media must be decoded in DataLoader workers"
        return original(*args, **kwargs)

    monkeypatch.setattr(streaming_module, "decode_media", decode_only_in_workers)
    weights = {"image": 0.5, "video": 0.5}
    dataset = InstVLIterableDataset(
        load_instvl(data_dir, "train"), num_frames=4, batch_size=BATCH, media_type_weights=weights, seed=1
    )
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2, collate_fn=InstAPDataCollator(processor))
    batches = list(loader)
    assert len(batches) >= 8
    ids_seen = set()
    for batch in batches:
        num_frames = batch["pixel_values"].shape[1]
        assert num_frames in (1, 4)  # images are 1-frame clips, videos 4 frames: one media type per batch
        check_contract(batch, num_frames)
        ids_seen.update(batch["source_ids"].tolist())
    assert len(ids_seen) == sum(b["source_ids"].shape[0] for b in batches)  # no sample twice
    # The first batches follow the seeded schedule (worker k % 2 builds batch k).
    schedule = list(itertools.islice(media_type_schedule(weights, seed=1, epoch=0), 4))
    kinds = ["image" if b["pixel_values"].shape[1] == 1 else "video" for b in batches[:4]]
    assert kinds == schedule


def test_ranks_agree_on_the_media_type_of_each_step(data_dir):
    weights = {"image": 0.5, "video": 0.5}
    kinds = []
    for rank in range(2):
        source = load_instvl(data_dir, "train", rank=rank, world_size=2)
        dataset = InstVLIterableDataset(
            source, num_frames=2, batch_size=2, media_type_weights=weights, seed=5
        )
        examples = list(itertools.islice(iter(dataset), 8))
        kinds.append([examples[i].media_type for i in range(0, 8, 2)])
        for i in range(0, 8, 2):
            assert examples[i].media_type == examples[i + 1].media_type
    assert kinds[0] == kinds[1] == list(itertools.islice(media_type_schedule(weights, 5, 0), 4))


def test_schedule_depends_on_seed_and_epoch_only():
    weights = {"image": 0.7, "video": 0.3}
    first = list(itertools.islice(media_type_schedule(weights, 0, 0), 200))
    assert first == list(itertools.islice(media_type_schedule(weights, 0, 0), 200))
    assert first != list(itertools.islice(media_type_schedule(weights, 0, 1), 200))
    assert 0.55 < first.count("image") / 200 < 0.85


def test_stage_one_collator_returns_only_pixel_values(data_dir, processor):
    dataset = InstVLIterableDataset(
        load_instvl(data_dir, "video_1k"), num_frames=4, require_caption=False, load_instances=False
    )
    collator = InstAPDataCollator(processor, text=False, instances=False)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collator)))
    assert set(batch) == {"pixel_values", "num_skipped_samples"} and batch["pixel_values"].shape == (3, 4, 3, 32, 32)
    assert int(batch["num_skipped_samples"]) == 0


def test_evaluation_collator_is_deterministic(data_dir, processor):
    dataset = InstVLIterableDataset(load_instvl(data_dir, "video_1k"), num_frames=4, training=False)
    collator = InstAPDataCollator(processor, training=False)
    first = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collator)))
    again = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collator)))
    for key in first:
        torch.testing.assert_close(first[key], again[key])
    check_contract(first, 4)


def test_collator_rejects_mixed_media(data_dir, processor):
    examples = list(InstVLIterableDataset(load_instvl(data_dir, "train"), num_frames=2))
    image = next(e for e in examples if e.media_type == "image")
    video = next(e for e in examples if e.media_type == "video")
    with pytest.raises(ValueError, match="one media type"):
        InstAPDataCollator(processor)([image, video])


def test_instance_subsets_change_per_epoch_and_cover_all():
    instances = list(range(10))
    subsets = [select_instances(instances, 4, seed=0, epoch=epoch, sample_id="s") for epoch in range(6)]
    assert all(len(subset) == 4 and subset == sorted(subset) for subset in subsets)
    assert len({tuple(subset) for subset in subsets}) > 1
    assert set().union(*subsets) == set(instances)
    assert select_instances(instances, 4, seed=0, epoch=2, sample_id="s") == subsets[2]
    assert select_instances(instances, None, seed=0, epoch=0, sample_id="s") == instances


def test_media_type_batch_sampler(data_dir):
    records = load_instvl(data_dir, "train", streaming=False, cache_dir=str(data_dir / "cache"))
    dataset = InstVLMapDataset(records, num_frames=2)
    media_types = dataset.media_types
    per_rank = [
        list(MediaTypeBatchSampler(media_types, 3, seed=2, rank=rank, world_size=2)) for rank in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    for step in zip(*per_rank):
        kinds = {media_types[i] for batch in step for i in batch}
        assert len(kinds) == 1  # one media type per batch, and the same one on both ranks
        assert all(len(batch) == 3 for batch in step)
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # disjoint
    sampler = MediaTypeBatchSampler(media_types, 3, seed=2, world_size=2, shard=False)
    assert (
        list(sampler)[0::2] == per_rank[0] and list(sampler)[1::2] == per_rank[1]
    )  # what accelerate's split gives
    sampler.set_epoch(1)
    assert list(sampler) != list(MediaTypeBatchSampler(media_types, 3, seed=2, world_size=2, shard=False))


def test_map_style_loader_with_the_batch_sampler(data_dir, processor):
    records = load_instvl(data_dir, "train", streaming=False, cache_dir=str(data_dir / "cache"))
    dataset = InstVLMapDataset(records, num_frames=4)
    sampler = MediaTypeBatchSampler(dataset.media_types, BATCH, seed=0)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=2, collate_fn=InstAPDataCollator(processor)
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        check_contract(batch, batch["pixel_values"].shape[1])


def test_epoch_reaches_workers_and_changes_caption_sentences(data_dir, processor):
    dataset = InstVLIterableDataset(load_instvl(data_dir, "video_1k"), num_frames=2)
    collator = InstAPDataCollator(processor)
    loader = EpochAwareDataLoader(dataset, batch_size=8, num_workers=1, collate_fn=collator)
    token_ids = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        (batch,) = list(loader)
        token_ids.append(batch["input_ids"])
    assert dataset.epoch == 2
    # Scene captions have three sentences: every epoch shows each sample a different one.
    assert all(
        not torch.equal(token_ids[a][i], token_ids[b][i])
        for a, b in [(0, 1), (1, 2), (0, 2)]
        for i in range(8)
    )
    sampler = MediaTypeBatchSampler(["video"] * 8, 2)
    map_dataset = InstVLMapDataset([{"media_type": "video"}] * 8)
    EpochAwareDataLoader(map_dataset, batch_sampler=sampler).set_epoch(5)
    assert sampler.epoch == map_dataset.epoch == 5


def test_dataset_options_object_and_keywords():
    """Both InstVL datasets read one options object; keyword fields replace its values and a misspelled one is an
    error naming it."""
    from instap_processing.streaming import InstVLExampleOptions, InstVLIterableDataset, InstVLMapDataset

    options = InstVLExampleOptions(num_frames=8, training=False, seed=3)
    mapped = InstVLMapDataset([], options, seed=5)
    streamed = InstVLIterableDataset([], options, batch_size=2, seed=5)
    assert mapped.options == streamed.options == InstVLExampleOptions(num_frames=8, training=False, seed=5)
    assert options.seed == 3  # the given object is not changed
    for cls in (InstVLMapDataset, InstVLIterableDataset):
        with pytest.raises(TypeError, match=r"unknown options \['num_frame'\]"):
            cls([], num_frame=8)
