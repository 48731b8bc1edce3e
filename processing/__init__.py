"""InstAP processing and data: decoding, the video processor, the processor, instance crops, and InstVL data.

Installed as the import package `instap_processing` (the source folder is `processing/`).

Main entry points:

- [`InstAPVideoProcessor`], [`InstAPProcessor`]: the transformers processors (`save_pretrained`/`from_pretrained`).
- [`decode_video`], [`decode_image`]: PyAV/PIL decoding of only the sampled frames.
- [`load_instvl`], [`INSTVL_FEATURES`]: InstVL records from the Hub, Parquet/WebDataset shards or JSON(L).
- [`InstVLIterableDataset`], [`InstVLMapDataset`], [`MediaTypeBatchSampler`], [`InstAPDataCollator`],
  [`EpochAwareDataLoader`]: decoding in DataLoader workers and batches of one media type in the model's batch
  contract (see `streaming.py` for distributed use with and without HF Trainer).
- `instap_processing.synthetic`: a synthetic InstVL with real encoded media (`python -m instap_processing.synthetic`).
"""

from modeling_instap.configuration_instap import InstAPConfig

from .captions import caption_offset, select_caption_sentence, split_sentences, swap_left_right
from .collator import InstAPDataCollator
from .crops import boxes_at_frames, clip_boxes, crop_instances, expand_small_boxes
from .decoding import DecodedVideo, decode_image, decode_media, decode_video
from .errors import BAD_SAMPLE_REASONS, InstVLSampleError, TooManyBadSamplesError
from .geometry import FrameTransform, get_frame_transform
from .instvl import (
    INSTVL_FEATURES,
    INSTVL_PATH_FEATURES,
    INSTVL_SPLITS,
    INSTVL_TEST_SPLITS,
    instvl_features,
    load_instvl,
)
from .processing_instap import InstAPProcessor
from .records import (
    InstVLInstance,
    InstVLRecord,
    parse_record,
    stable_source_id,
    validate_instance_against_media,
    validate_instances_against_media,
)
from .sampling import sample_frame_indices
from .streaming import (
    BadSampleTracker,
    EpochAwareDataLoader,
    InstVLExample,
    InstVLExampleOptions,
    InstVLIterableDataset,
    InstVLMapDataset,
    MediaTypeBatchSampler,
    media_type_schedule,
    prepare_example,
)
from .video_processing_instap import InstAPVideoProcessor, InstAPVideosKwargs

__all__ = [
    "BAD_SAMPLE_REASONS",
    "INSTVL_FEATURES",
    "INSTVL_PATH_FEATURES",
    "INSTVL_SPLITS",
    "INSTVL_TEST_SPLITS",
    "BadSampleTracker",
    "DecodedVideo",
    "EpochAwareDataLoader",
    "FrameTransform",
    "InstAPDataCollator",
    "InstAPProcessor",
    "InstAPVideoProcessor",
    "InstAPVideosKwargs",
    "InstVLExample",
    "InstVLInstance",
    "InstVLIterableDataset",
    "InstVLMapDataset",
    "InstVLRecord",
    "InstVLSampleError",
    "InstVLExampleOptions",
    "MediaTypeBatchSampler",
    "TooManyBadSamplesError",
    "boxes_at_frames",
    "caption_offset",
    "clip_boxes",
    "crop_instances",
    "decode_image",
    "decode_media",
    "decode_video",
    "expand_small_boxes",
    "get_frame_transform",
    "instvl_features",
    "load_instvl",
    "media_type_schedule",
    "parse_record",
    "prepare_example",
    "register_auto_classes",
    "sample_frame_indices",
    "select_caption_sentence",
    "split_sentences",
    "stable_source_id",
    "swap_left_right",
    "validate_instance_against_media",
    "validate_instances_against_media",
]


def register_auto_classes() -> None:
    """Registers the processors with `AutoVideoProcessor`/`AutoProcessor` against `InstAPConfig` (done on import)."""
    from transformers import AutoProcessor, AutoVideoProcessor

    AutoVideoProcessor.register(InstAPConfig, InstAPVideoProcessor, exist_ok=True)
    AutoProcessor.register(InstAPConfig, InstAPProcessor, exist_ok=True)


register_auto_classes()
