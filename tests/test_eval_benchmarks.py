"""Retrieval benchmarks from local files: annotation parsing, on-the-fly decoding with a bounded cache, and agreement
of the evaluation with an independent per-video reference (real MP4/JPEG media, a tiny random model)."""

import json
import os

import pytest
import torch
from eval_helpers import NUM_FRAMES, make_benchmark, make_synthetic_instvl, make_tiny_checkpoint

from instap_eval.benchmarks import (
    PARAGRAPH_MAX_TEXT_LENGTH,
    CachedBatches,
    RetrievalBenchmark,
    evaluate_benchmark,
    evaluate_instvl_split,
    evaluation_batches,
    is_benchmark_file,
    load_benchmark_json,
)
from instap_eval.retrieval import (
    chance_mean_recall,
    ground_truth_with_identical_texts,
    video_text_retrieval_metrics,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from instap_processing import InstAPProcessor
    from modeling_instap import InstAPModel

    root = str(tmp_path_factory.mktemp("eval_benchmarks"))
    synthetic = make_synthetic_instvl(root)
    checkpoint = make_tiny_checkpoint(root, synthetic)
    model = InstAPModel.from_pretrained(checkpoint).eval()
    processor = InstAPProcessor.from_pretrained(checkpoint)
    benchmark_file, media_root, entries = make_benchmark(root)
    return model, processor, synthetic, benchmark_file, media_root, entries


def test_annotation_file_parsing(setup, tmp_path):
    _, _, synthetic, path, media_root, entries = setup
    assert is_benchmark_file(path)
    benchmark = load_benchmark_json(path, media_root)
    # The image is listed last in the file but batched first; every video keeps its own captions.
    assert benchmark.media_types == ["image"] + ["video"] * 5
    assert benchmark.video_ids[0] == "clips/still.jpg"
    assert len(benchmark.texts) == 1 + 3 + 2 * 2  # odd videos have two captions
    for text, video in zip(benchmark.texts, benchmark.text_to_video):
        entry = next(e for e in entries if e["video"] == benchmark.video_ids[video])
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        assert text in captions
    assert all(os.path.isabs(video) and os.path.isfile(video) for video in benchmark.videos)

    # Paragraph mode: one text per video, its captions joined in order.
    paragraph = load_benchmark_json(path, media_root, paragraph=True)
    assert len(paragraph.texts) == len(paragraph.videos) == 6
    row = paragraph.video_ids.index("clips/1.mp4")
    assert paragraph.texts[paragraph.text_to_video.index(row)] == "a red square number 1 a blue circle moving left"

    # Entries repeating a video (one caption per line, MSR-VTT style) are merged into one video with several texts.
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("\n".join(json.dumps({"video": "clips/0.mp4", "caption": c}) for c in ("one", "two", "three")))
    merged = load_benchmark_json(repeated, media_root)
    assert len(merged.videos) == 1 and merged.texts == ["one", "two", "three"] and merged.text_to_video == [0, 0, 0]

    # Missing files fail loudly, or are dropped with their texts on request.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(entries + [{"video": "clips/nope.mp4", "caption": ["lost", "gone"]}]))
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_benchmark_json(broken, media_root)
    skipped = load_benchmark_json(broken, media_root, skip_missing=True)
    assert skipped.num_missing == 1 and "lost" not in skipped.texts and len(skipped.videos) == 6
    # InstVL records (and other JSON) are not mistaken for a benchmark file.
    instvl = tmp_path / "instvl.json"
    instvl.write_text(json.dumps([{"id": "a", "media_type": "video", "media": "clips/0.mp4", "caption": "x"}]))
    assert not is_benchmark_file(instvl)
    assert not is_benchmark_file(os.path.join(synthetic, "instap_synthetic.json"))


def test_cached_batches_decode_once_within_budget_and_again_beyond():
    decoded = []

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, index):
            decoded.append(index)
            return torch.full((2, 8), float(index))

    batches = evaluation_batches(["video"] * 7, 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]
    one_batch_bytes = 3 * 2 * 8 * 4
    cached = CachedBatches(Items(), batches, torch.stack, cache_bytes=one_batch_bytes)
    first, second = [b.clone() for b in cached()], list(cached())
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    assert torch.cat(first)[:, 0, 0].tolist() == list(range(7))
    # Only the first batch fits in the budget: the second pass decodes the other two again.
    assert decoded == list(range(7)) + [3, 4, 5, 6]
    assert cached.num_decoded_batches == 5
    # Mixed media types never share a batch; images come first.
    assert evaluation_batches(["video", "image", "video", "image"], 4) == [[1, 3], [0, 2]]


def _reference_metrics(model, processor, videos, texts, text_to_video, max_length):
    """Dual-encoder metrics computed one clip at a time through the processor's own decoding (path -> frames)."""
    with torch.no_grad():
        video_embeds = torch.cat([
            model.get_video_features(processor.video_processor(video, return_tensors="pt")["pixel_values"]).pooler_output
            for video in videos
        ])
        tokens = processor.tokenize(texts, max_length)
        text_embeds = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
    ground_truth = ground_truth_with_identical_texts(text_to_video, tokens["input_ids"], tokens["attention_mask"])
    return video_text_retrieval_metrics(video_embeds @ text_embeds.t(), ground_truth)


@pytest.mark.parametrize("paragraph", [False, True])
def test_benchmark_evaluation_matches_per_video_reference(setup, paragraph):
    model, processor, _, path, media_root, _ = setup
    benchmark = load_benchmark_json(path, media_root, paragraph=paragraph)
    # Hand the clips over in file order (image last) so that the batching must reorder them and remap the truth.
    order = list(range(1, len(benchmark.videos))) + [0]
    position = {old: new for new, old in enumerate(order)}
    shuffled = RetrievalBenchmark(
        videos=[benchmark.videos[i] for i in order],
        media_types=[benchmark.media_types[i] for i in order],
        video_ids=[benchmark.video_ids[i] for i in order],
        texts=benchmark.texts,
        text_to_video=[position[v] for v in benchmark.text_to_video],
        paragraph=paragraph,
    )
    result = evaluate_benchmark(model, processor, shuffled, k=3, batch_size=2, cache_bytes=0)
    expected_length = PARAGRAPH_MAX_TEXT_LENGTH if paragraph else processor.max_length
    assert result["max_text_length"] == expected_length and result["num_frames"] == NUM_FRAMES
    reference = _reference_metrics(
        model, processor, shuffled.videos, shuffled.texts, shuffled.text_to_video, expected_length
    )
    assert result["global"]["dual_encoder"] == pytest.approx(reference, abs=1e-6)
    # Re-ranked: the recalls only (ranks outside the top k are not meaningful).
    assert set(result["global"]["reranked"]) == {key for key in reference if not key.endswith(("medr", "meanr"))}
    # No cache: the re-ranking pass decoded every batch a second time.
    assert result["decoded_batches"] == 2 * result["batches"]


def test_instvl_split_global_and_instance(setup):
    """A mixed split (train: images and videos) is regrouped by media type; captions must follow their clips."""
    from instap_processing.collator import InstAPDataCollator
    from instap_processing.instvl import load_instvl
    from instap_processing.streaming import InstVLMapDataset

    model, processor, synthetic, *_ = setup
    result = evaluate_instvl_split(model, processor, synthetic, "train", k=4, batch_size=3)
    records = load_instvl(synthetic, "train", streaming=False)
    assert len(set(records["media_type"])) == 2
    dataset = InstVLMapDataset(records, num_frames=NUM_FRAMES, training=False, max_instances_per_sample=None)
    collator = InstAPDataCollator(processor, training=False)
    with torch.no_grad():
        video_embeds, text_embeds, text_ids, text_masks = [], [], [], []
        for index in range(len(dataset)):  # record order, one sample at a time
            batch = collator([dataset[index]])
            video_embeds.append(model.get_video_features(batch["pixel_values"]).pooler_output)
            text_embeds.append(model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output)
            text_ids.append(batch["input_ids"])
            text_masks.append(batch["attention_mask"])
    scores = torch.cat(video_embeds) @ torch.cat(text_embeds).t()
    ground_truth = ground_truth_with_identical_texts(torch.arange(len(dataset)), torch.cat(text_ids), torch.cat(text_masks))
    reference = video_text_retrieval_metrics(scores, ground_truth)
    assert result["global"]["dual_encoder"] == pytest.approx(reference, abs=1e-6)
    num_instances = sum(len(r) for r in records["instances"])
    assert result["num_instances"] == num_instances and result["attention_pool"] is True
    for part in ("global", "instance"):
        for scoring in ("dual_encoder", "reranked"):
            metrics = result[part][scoring]
            six = [metrics[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)]
            assert metrics["r_mean"] == pytest.approx(sum(six) / 6)
    # A random ranking's mean recall over the split's candidates (one correct item each).
    assert result["global"]["chance_r_mean"] == pytest.approx(chance_mean_recall(len(dataset)))
    assert result["instance"]["chance_r_mean"] == pytest.approx(chance_mean_recall(num_instances))
    # Everything fit in the default cache: each batch was decoded once for three passes.
    assert result["decoded_batches"] == result["batches"]

    # Crops scored alone (global-only baselines) give other instance scores than crops pooled with their scene.
    alone = evaluate_instvl_split(
        model, processor, synthetic, "train", k=4, batch_size=3, use_attention_pool=False, rerank=False
    )
    assert alone["attention_pool"] is False
    assert alone["global"]["dual_encoder"] == pytest.approx(result["global"]["dual_encoder"])
    assert alone["instance"]["dual_encoder"] != pytest.approx(result["instance"]["dual_encoder"])


def test_results_table_from_the_results_schema():
    """One schema (split -> part -> scoring -> metrics) and one table: a row per part and scoring, chance where given,
    n/a for a missing or non-finite value."""
    from instap_eval.benchmarks import format_results_table

    metrics = {"t2v_r1": 10.0, "t2v_r5": 20.0, "t2v_r10": 30.0, "t2v_r_mean": 20.0, "v2t_r1": 40.0,
               "v2t_r5": 50.0, "v2t_r10": 60.0, "v2t_r_mean": 50.0, "r_mean": 35.0}
    evaluations = {
        "img_1k": {
            "global": {"dual_encoder": metrics, "reranked": {**metrics, "t2v_r1": float("nan")}, "chance_r_mean": 4.17},
            "instance": {"dual_encoder": metrics, "chance_r_mean": 1.85},
            "num_videos": 128,
        },
    }
    lines = format_results_table(evaluations).splitlines()
    assert lines[0].endswith("| mean R | chance mean R |")
    assert lines[2:] == [
        "| img_1k global, dual encoder | 10.00 | 20.00 | 30.00 | 20.00 | 40.00 | 50.00 | 60.00 | 50.00 | 35.00 | 4.17 |",
        "| img_1k global, re-ranked | n/a | 20.00 | 30.00 | 20.00 | 40.00 | 50.00 | 60.00 | 50.00 | 35.00 | 4.17 |",
        "| img_1k instance, dual encoder | 10.00 | 20.00 | 30.00 | 20.00 | 40.00 | 50.00 | 60.00 | 50.00 | 35.00 | 1.85 |",
    ]
    assert chance_mean_recall(4) == pytest.approx(75.0) and chance_mean_recall(128) == pytest.approx(100 * 16 / 3 / 128)
