"""PyTorch datasets over InstVL records: decoding in DataLoader workers, bad-sample accounting, one media type per
batch.

Two ways to feed the model:

- **Streaming** ([`InstVLIterableDataset`]): wraps a `datasets.IterableDataset` (from [`load_instvl`]) or any
  iterable of records. Each DataLoader worker reads its own shards, decodes and checks each sample, and emits
  samples in runs of `batch_size` of one media type, so that `DataLoader(batch_size=batch_size,
  collate_fn=InstAPDataCollator(...))` builds batches of one media type. For mixed image/video data the media type
  of step `k` follows a seeded schedule ([`media_type_schedule`]) that every rank computes identically.
- **Map-style** ([`InstVLMapDataset`] + [`MediaTypeBatchSampler`]): the batch sampler yields whole batches of one
  media type in a seeded order that is the same on every rank.

Distributed use:

- Custom loop: split the records per rank (`load_instvl(..., rank=, world_size=)`) for streaming, or give the batch
  sampler `rank`/`world_size`.
- HF Trainer: accelerate shards a `datasets.IterableDataset` by itself, but a *torch* `IterableDataset` such as this
  one is wrapped in `IterableDatasetShard`, where every rank reads (and here would decode) every sample. So build the
  DataLoader yourself in `Trainer.get_train_dataloader` from a per-rank stream (`load_instvl(..., rank=, world_size=)`)
  and return it without `accelerator.prepare`, as an [`EpochAwareDataLoader`] so that Trainer's `set_epoch` reaches
  the dataset (caption sentence, instance subset and media-type schedule change per epoch). Or, map-style, pass
  `MediaTypeBatchSampler(world_size=num_processes, shard=False)` and let `accelerator.prepare` (BatchSamplerShard)
  hand every rank its batches. Never shard twice.

Bad samples: with `skip_bad_samples=True` a sample that raises [`InstVLSampleError`] is skipped, counted per reason
and logged; [`BadSampleTracker`] raises [`TooManyBadSamplesError`] past `max_bad_samples` skipped samples or a
`max_bad_fraction` share (each DataLoader worker counts its own samples). With `skip_bad_samples=False` the error
propagates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from .decoding import DecodedVideo, decode_media
from .errors import InstVLSampleError, TooManyBadSamplesError
from .records import InstVLInstance, InstVLRecord, parse_record, validate_instances_against_media

__all__ = [
    "BadSampleTracker",
    "EpochAwareDataLoader",
    "InstVLExample",
    "InstVLIterableDataset",
    "InstVLMapDataset",
    "InstVLExampleOptions",
    "MediaTypeBatchSampler",
    "media_type_schedule",
    "prepare_example",
    "select_instances",
]

logger = logging.getLogger(__name__)


@dataclass
class InstVLExample:
    """One decoded, checked sample, as the collator receives it."""

    sample_id: str
    media_type: str
    video: DecodedVideo
    caption: str
    instances: list[InstVLInstance] = field(default_factory=list)
    epoch: int = 0
    # Seed of this sample's random augmentation (crop, flip) this epoch: from (seed, epoch, id), not from any global
    # RNG, so that what a step sees does not depend on process history (a resumed run sees the same data).
    augment_seed: int | None = None
    # Bad samples this worker skipped since its previous good one: the count travels with the batches to the main
    # process, so the trainer's total covers every worker (skips after a worker's last good sample of a pass are the
    # only ones it never sees).
    skipped_before: int = 0


class BadSampleTracker:
    """Counts skipped samples per reason, logs them, and stops a stream that is mostly broken.

    Args:
        max_bad_samples (`int`, *optional*, defaults to 1000): raise once more samples than this were skipped.
            `None` disables the absolute cap.
        max_bad_fraction (`float`, *optional*, defaults to 0.1): raise once the skipped share of the samples seen so
            far exceeds this, after at least `min_samples_for_fraction` samples. `None` disables it.
        min_samples_for_fraction (`int`, *optional*, defaults to 50)
        log_first (`int`, *optional*, defaults to 20): log a warning for the first `log_first` skipped samples, then
            every 100th (the counts per reason are in the final error and in [`summary`]).
    """

    def __init__(
        self,
        max_bad_samples: int | None = 1000,
        max_bad_fraction: float | None = 0.1,
        min_samples_for_fraction: int = 50,
        log_first: int = 20,
    ) -> None:
        self.max_bad_samples = max_bad_samples
        self.max_bad_fraction = max_bad_fraction
        self.min_samples_for_fraction = min_samples_for_fraction
        self.log_first = log_first
        self.num_seen = 0
        self.num_bad = 0
        self.reasons: Counter[str] = Counter()

    @property
    def num_good(self) -> int:
        return self.num_seen - self.num_bad

    def record_good(self) -> None:
        self.num_seen += 1

    def record_bad(self, error: InstVLSampleError) -> None:
        """Counts and logs a skipped sample; raises [`TooManyBadSamplesError`] when a cap is passed."""
        self.num_seen += 1
        self.num_bad += 1
        self.reasons[error.reason] += 1
        if self.num_bad <= self.log_first or self.num_bad % 100 == 0:
            logger.warning("Skipping bad sample (%d skipped so far): %s", self.num_bad, error)
        self._check_caps(f"by reason: {dict(self.reasons)}. Last: {error}")

    def add_counts(self, num_bad: int, num_good: int) -> None:
        """Counts skipped and good samples reported elsewhere (the batches of DataLoader workers) and applies the
        caps to the totals; raises [`TooManyBadSamplesError`] when one is passed."""
        self.num_bad += int(num_bad)
        self.num_seen += int(num_bad) + int(num_good)
        if num_bad:
            self._check_caps("see the logged InstVLSampleError messages.")

    def _check_caps(self, details: str) -> None:
        if self.max_bad_samples is not None and self.num_bad > self.max_bad_samples:
            raise TooManyBadSamplesError(
                f"{self.num_bad} bad samples skipped (cap max_bad_samples={self.max_bad_samples}); {details}"
            )
        if (
            self.max_bad_fraction is not None
            and self.num_seen >= self.min_samples_for_fraction
            and self.num_bad / self.num_seen > self.max_bad_fraction
        ):
            raise TooManyBadSamplesError(
                f"{self.num_bad} of {self.num_seen} samples were bad ({self.num_bad / self.num_seen:.0%} > "
                f"max_bad_fraction={self.max_bad_fraction:.0%}); {details}"
            )

    def check_end_of_stream(self) -> None:
        """At the end of a pass: raise if samples were seen but none was usable."""
        if self.num_seen > 0 and self.num_good == 0:
            raise TooManyBadSamplesError(
                f"All {self.num_seen} samples of the stream were bad; by reason: {dict(self.reasons)}."
            )

    def summary(self) -> dict[str, Any]:
        return {"seen": self.num_seen, "bad": self.num_bad, "by_reason": dict(self.reasons)}


def augment_seed(seed: int, epoch: int, sample_id: str, purpose: str) -> int:
    """A 63-bit seed for one sample's random draws of one kind (`"frames"`, `"crop"`) in one epoch."""
    digest = hashlib.sha256(f"{purpose}\x1f{seed}\x1f{epoch}\x1f{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def select_instances(
    instances: Sequence[InstVLInstance], max_instances: int | None, *, seed: int, epoch: int, sample_id: str
) -> list[InstVLInstance]:
    """At most `max_instances` instances, a different seeded subset each epoch (METHOD §4.2), in record order."""
    if max_instances is None or len(instances) <= max_instances:
        return list(instances)
    rng = random.Random(f"{seed}\x1f{epoch}\x1f{sample_id}")
    chosen = sorted(rng.sample(range(len(instances)), max_instances))
    return [instances[i] for i in chosen]


def prepare_example(
    raw: Mapping[str, Any] | InstVLRecord,
    *,
    num_frames: int,
    frame_sampling: str = "rand",
    epoch: int = 0,
    seed: int = 0,
    max_instances_per_sample: int | None = 4,
    require_caption: bool = True,
    load_instances: bool = True,
    decode_threads: int = 1,
    decode_thread_type: str = "FRAME",
) -> InstVLExample:
    """Parses, decodes and checks one record. Raises [`InstVLSampleError`] naming the sample id and field."""
    if isinstance(raw, Mapping) and raw.get("_error"):
        raise InstVLSampleError(
            str(raw["_error"]),
            sample_id=str(raw.get("id")),
            field=raw.get("_error_field"),
            reason=raw.get("_error_reason") or "malformed_record",
        )
    if isinstance(raw, InstVLRecord):
        record = raw
    else:
        if not load_instances and isinstance(raw, Mapping):
            raw = {key: value for key, value in raw.items() if key != "instances"}
        record = parse_record(raw, require_caption=require_caption)
    try:
        frames_generator = None
        if frame_sampling == "rand":
            frames_generator = torch.Generator().manual_seed(augment_seed(seed, epoch, record.id, "frames"))
        video = decode_media(
            record.media,
            record.media_type,
            num_frames=num_frames,
            sampling=frame_sampling,
            generator=frames_generator,
            num_threads=decode_threads,
            thread_type=decode_thread_type,
            sample_id=record.id,
        )
    except InstVLSampleError as error:
        raise error.with_context(sample_id=record.id, field="media") from None
    validate_instances_against_media(
        record, num_frames=video.total_num_frames, height=video.height, width=video.width
    )
    instances = select_instances(
        record.instances, max_instances_per_sample, seed=seed, epoch=epoch, sample_id=record.id
    )
    return InstVLExample(
        sample_id=record.id,
        media_type=record.media_type,
        video=video,
        caption=record.caption,
        instances=instances,
        epoch=epoch,
        augment_seed=augment_seed(seed, epoch, record.id, "crop"),
    )


@dataclass(frozen=True)
class InstVLExampleOptions:
    """How both InstVL datasets turn a record into an [`InstVLExample`] and what they do with a bad one.

    Args:
        num_frames (`int`, *optional*, defaults to 16): frames per video clip (8 for stage 1).
        training (`bool`, *optional*, defaults to `True`): `"rand"` frame sampling and per-epoch instance subsets;
            otherwise `"middle"` sampling and all instances.
        seed (`int`, *optional*, defaults to 0): seeds frame sampling, crops and instance subsets (and the stream's
            media-type schedule).
        max_instances_per_sample (`int`, *optional*, defaults to 4): `None` keeps all instances (always when not
            training).
        require_caption (`bool`, *optional*, defaults to `True`): `False` for stage 1 (video only).
        load_instances (`bool`, *optional*, defaults to `True`): `False` ignores the `instances` field (stage 1).
        skip_bad_samples (`bool`, *optional*, defaults to `True`): skip and count bad samples instead of raising.
        max_bad_samples, max_bad_fraction: caps of the [`BadSampleTracker`] (per worker).
        decode_threads (`int`, *optional*, defaults to 1): FFmpeg threads per decode (0: one per core).
        decode_thread_type (`str`, *optional*, defaults to `"FRAME"`): how they share a decode (`decode_video`'s
            `thread_type`).
    """

    num_frames: int = 16
    training: bool = True
    seed: int = 0
    max_instances_per_sample: int | None = 4
    require_caption: bool = True
    load_instances: bool = True
    skip_bad_samples: bool = True
    max_bad_samples: int | None = 1000
    max_bad_fraction: float | None = 0.1
    decode_threads: int = 1
    decode_thread_type: str = "FRAME"

    @classmethod
    def build(cls, options: InstVLExampleOptions | None, fields: Mapping[str, Any], dataset: str) -> InstVLExampleOptions:
        """`options` (or the defaults) with `fields` replaced; an unknown field name is an error naming it."""
        unknown = sorted(set(fields) - {item.name for item in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"{dataset} got unknown options {unknown}; see InstVLExampleOptions.")
        return dataclasses.replace(options or cls(), **fields)

    def new_tracker(self) -> BadSampleTracker:
        return BadSampleTracker(self.max_bad_samples, self.max_bad_fraction)

    def prepare_or_skip(self, raw: Mapping[str, Any], epoch: int, tracker: BadSampleTracker) -> InstVLExample | None:
        """`prepare_example` with these options; a bad sample is counted and gives `None` (or raises when bad
        samples are not skipped)."""
        try:
            example = prepare_example(
                raw,
                num_frames=self.num_frames,
                frame_sampling="rand" if self.training else "middle",
                epoch=epoch,
                seed=self.seed,
                max_instances_per_sample=self.max_instances_per_sample if self.training else None,
                require_caption=self.require_caption,
                load_instances=self.load_instances,
                decode_threads=self.decode_threads,
                decode_thread_type=self.decode_thread_type,
            )
        except InstVLSampleError as error:
            if not self.skip_bad_samples:
                raise
            tracker.record_bad(error)
            return None
        tracker.record_good()
        return example


def media_type_schedule(weights: Mapping[str, float], seed: int, epoch: int) -> Iterator[str]:
    """The media type of each step: an endless seeded draw with probabilities proportional to `weights`.

    It depends only on `(weights, seed, epoch)`, so every rank (and every DataLoader worker, which takes the steps
    `worker_id::num_workers`) computes the same schedule without communicating.
    """
    media_types = sorted(weights)
    probabilities = [float(weights[m]) for m in media_types]
    if not media_types or min(probabilities) < 0 or sum(probabilities) <= 0:
        raise ValueError(f"media_type_weights must be non-negative with a positive sum, got {dict(weights)}")
    rng = random.Random(f"media-type-schedule\x1f{seed}\x1f{epoch}")
    while True:
        yield rng.choices(media_types, probabilities)[0]


def _group_by_media_type(
    examples: Iterable[InstVLExample],
    batch_size: int,
    schedule: Iterator[str] | None,
    max_buffered_batches: int,
    drop_last: bool,
) -> Iterator[InstVLExample]:
    """Re-emits examples in runs of `batch_size` of one media type (in the order of `schedule` when given)."""
    buffers: dict[str, list[InstVLExample]] = {}
    wanted = next(schedule) if schedule is not None else None
    warned = False

    for example in examples:
        buffers.setdefault(example.media_type, []).append(example)
        if schedule is None:
            buffer = buffers[example.media_type]
            if len(buffer) >= batch_size:
                yield from buffer[:batch_size]
                del buffer[:batch_size]
            continue
        while len(buffers.get(wanted, ())) >= batch_size:
            yield from buffers[wanted][:batch_size]
            del buffers[wanted][:batch_size]
            wanted = next(schedule)
        for media_type, buffer in buffers.items():
            if media_type != wanted and len(buffer) >= max_buffered_batches * batch_size:
                # The stream holds far more of this type than the weights say: emit it out of schedule rather than
                # buffering without bound (ranks may then briefly disagree on the media type of a step).
                if not warned:
                    logger.warning(
                        "media_type_weights do not match the stream: emitting %r batches out of schedule",
                        media_type,
                    )
                    warned = True
                yield from buffer[:batch_size]
                del buffer[:batch_size]

    for media_type in sorted(buffers):
        buffer = buffers[media_type]
        while len(buffer) >= batch_size:
            yield from buffer[:batch_size]
            del buffer[:batch_size]
        if buffer and not drop_last:
            yield from buffer


def _is_datasets_iterable(source: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(source, datasets.IterableDataset)


class InstVLIterableDataset(IterableDataset):
    """Streams decoded [`InstVLExample`]s; decoding runs in the DataLoader workers.

    Args:
        source: a `datasets.IterableDataset` (split between workers by shards), or any re-iterable of records
            (split between workers record by record).
        options ([`InstVLExampleOptions`], *optional*): decoding and bad-sample options; its fields can also be
            given as keywords (`num_frames=8`), which replace the ones of `options`.
        batch_size (`int`, *optional*): emit samples in runs of `batch_size` of one media type (give the DataLoader
            the same batch size). `None` keeps the stream order (a single media type, or a batch sampler elsewhere).
        media_type_weights (`dict[str, float]`, *optional*): expected share of each media type, e.g.
            `{"image": 0.97, "video": 0.03}`; makes every rank use the same media type at the same step (seeded by
            the options' `seed`).
        max_buffered_batches (`int`, *optional*, defaults to 64): per media type, batches held while waiting for the
            scheduled type before emitting out of schedule.
        drop_last (`bool`, *optional*, defaults to `True`): drop the incomplete last run of each media type.
    """

    def __init__(
        self,
        source: Iterable[Mapping[str, Any]],
        options: InstVLExampleOptions | None = None,
        *,
        batch_size: int | None = None,
        media_type_weights: Mapping[str, float] | None = None,
        max_buffered_batches: int = 64,
        drop_last: bool = True,
        **option_fields: Any,
    ) -> None:
        super().__init__()
        self.source = source
        self.options = InstVLExampleOptions.build(options, option_fields, type(self).__name__)
        self.batch_size = batch_size
        self.media_type_weights = dict(media_type_weights) if media_type_weights else None
        self.max_buffered_batches = max_buffered_batches
        self.drop_last = drop_last
        self.epoch = 0
        self.last_tracker: BadSampleTracker | None = None

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch (caption sentence, instance subset, media-type schedule, source shuffling)."""
        self.epoch = int(epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self.epoch)

    def _records_of_this_worker(self) -> Iterator[Mapping[str, Any]]:
        worker = get_worker_info()
        records = iter(self.source)
        if worker is None or worker.num_workers == 1 or _is_datasets_iterable(self.source):
            # `datasets.IterableDataset` splits its shards between workers by itself.
            return records
        return itertools.islice(records, worker.id, None, worker.num_workers)

    def _examples(self, tracker: BadSampleTracker) -> Iterator[InstVLExample]:
        counted = 0
        for raw in self._records_of_this_worker():
            example = self.options.prepare_or_skip(raw, self.epoch, tracker)
            if example is not None:
                example.skipped_before, counted = tracker.num_bad - counted, tracker.num_bad
                yield example
        tracker.check_end_of_stream()

    def __iter__(self) -> Iterator[InstVLExample]:
        tracker = self.options.new_tracker()
        self.last_tracker = tracker
        examples = self._examples(tracker)
        if self.batch_size is None:
            yield from examples
            return
        schedule = None
        if self.media_type_weights:
            schedule = media_type_schedule(self.media_type_weights, self.options.seed, self.epoch)
            worker = get_worker_info()
            if worker is not None and worker.num_workers > 1:
                # The DataLoader takes batch k from worker k % num_workers.
                schedule = itertools.islice(schedule, worker.id, None, worker.num_workers)
        yield from _group_by_media_type(
            examples, self.batch_size, schedule, self.max_buffered_batches, self.drop_last
        )


class InstVLMapDataset(Dataset):
    """Map-style access to InstVL records (a `datasets.Dataset` or a list); `__getitem__` decodes one sample.

    With `skip_bad_samples=True` a bad sample gives `None` (counted and logged); [`InstAPDataCollator`] drops the
    `None`s from its batch. `options` and keyword option fields as in [`InstVLIterableDataset`].
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        options: InstVLExampleOptions | None = None,
        **option_fields: Any,
    ) -> None:
        self.records = records
        self.options = InstVLExampleOptions.build(options, option_fields, type(self).__name__)
        self.tracker = self.options.new_tracker()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def media_types(self) -> list[str]:
        """The media type of every record, read without decoding (for [`MediaTypeBatchSampler`])."""
        column_names = getattr(self.records, "column_names", None)
        if column_names is not None and "media_type" in column_names:
            return list(self.records["media_type"])
        return [record.get("media_type") for record in self.records]

    def __getitem__(self, index: int) -> InstVLExample | None:
        return self.options.prepare_or_skip(self.records[int(index)], self.epoch, self.tracker)


class MediaTypeBatchSampler(Sampler[list[int]]):
    """Batches of indices of one media type, in a seeded order that every rank agrees on.

    Per epoch (seed + epoch): the indices of each media type are shuffled and cut into batches; the batches of each
    type are grouped `world_size` at a time into steps; the steps of all types are shuffled together. Rank `r` takes
    batch `r` of every step, so all ranks see the same media type at the same step and the same number of batches.

    With accelerate (`accelerator.prepare` wraps the batch sampler in `BatchSamplerShard`, which hands rank `r` the
    batches `r, r + world_size, ...`), pass `world_size=accelerator.num_processes` and `shard=False`: the sampler then
    yields every step's batches and accelerate does the split.

    Args:
        media_types (`Sequence[str]`): media type of every index (e.g. `InstVLMapDataset.media_types`).
        batch_size (`int`)
        seed (`int`, *optional*, defaults to 0)
        shuffle (`bool`, *optional*, defaults to `True`): `False` keeps index order (evaluation).
        drop_last (`bool`, *optional*, defaults to `True`): drop incomplete batches (and incomplete steps). With
            `False` the last batch of a type may be short and the last step of a type may have fewer batches than
            ranks (ranks then get different numbers of batches: evaluation on one process only).
        rank, world_size (`int`, *optional*): this process and the number of processes.
        shard (`bool`, *optional*, defaults to `True`): yield only this rank's batches.
    """

    def __init__(
        self,
        media_types: Sequence[str],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shard: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.media_types = list(media_types)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def steps(self) -> list[list[list[int]]]:
        """All steps of the epoch; each step is `world_size` batches of one media type."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        by_type: dict[str, list[int]] = {}
        for index, media_type in enumerate(self.media_types):
            by_type.setdefault(media_type, []).append(index)
        steps: list[list[list[int]]] = []
        for media_type in sorted(by_type):
            indices = by_type[media_type]
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
            for start in range(0, len(batches), self.world_size):
                step = batches[start : start + self.world_size]
                if len(step) == self.world_size or not self.drop_last:
                    steps.append(step)
        if self.shuffle:
            steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
        return steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps():
            if not self.shard:
                yield from step
            elif self.rank < len(step):
                yield step[self.rank]

    def __len__(self) -> int:
        steps = self.steps()
        if not self.shard:
            return sum(len(step) for step in steps)
        return sum(1 for step in steps if self.rank < len(step))


class EpochAwareDataLoader(DataLoader):
    """A `DataLoader` whose `set_epoch` reaches its dataset and batch sampler.

    HF Trainer calls `train_dataloader.set_epoch(epoch)` when the loader has that method; a plain `DataLoader` does
    not, so a loader built by hand (see the module docstring) would stay in epoch 0: the same caption sentence, the
    same instance subset and the same media-type schedule every epoch. The epoch reaches the workers when they
    start, so do not combine this with `persistent_workers=True`.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.persistent_workers and self.num_workers > 0:
            raise ValueError(
                "The epoch cannot reach persistent DataLoader workers; use persistent_workers=False."
            )
        targets = (self.dataset, self.batch_sampler, getattr(self.batch_sampler, "batch_sampler", None))
        for target in targets:
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
