"""The zero-shot video classification pipeline (`modeling_instap.pipeline_instap`): `pipeline(...)` on an exported
folder (remote code) and on a plain saved folder (the project's registration), scores against a direct computation
with `InstAPModel`, matching-head re-ranking, and the same call in a fresh process without the InstAP packages."""

from __future__ import annotations

import json

import pytest
import torch
from hub_helpers import (
    coloured_frames,
    isolated_remote_code,
    make_model,
    make_processor,
    run_fresh,
    write_tiny_video,
)
from transformers import pipeline

from instap_processing import InstAPProcessor
from instap_train.hub import export_for_hub
from modeling_instap import InstAPModel
from modeling_instap.pipeline_instap import TASK, InstAPZeroShotVideoClassificationPipeline, register_pipeline

LABELS = ["a red square moving right", "a green field", "the blue circle", "two black objects"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    processor = make_processor(root / "tokenizer")
    model = make_model(pretraining=False)
    exported = root / "exported"
    export_for_hub(model, processor, exported, repo_id="org/instap-tiny")
    plain = root / "plain"  # save_pretrained only: no custom_pipelines, no processor auto_map
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    video = write_tiny_video(root / "clip.mp4")
    return model, processor, exported, plain, video


def _direct_scores(folder, video, texts) -> torch.Tensor:
    """Softmax over the dual-encoder logits, computed with the installed classes (no pipeline)."""
    model = InstAPModel.from_pretrained(folder).eval()
    processor = InstAPProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(pixel_values=processor(videos=[video])["pixel_values"], **processor.tokenize(texts))
    return logits.logits_per_video[0].softmax(-1)


def _check_result(result, labels, expected: torch.Tensor) -> None:
    assert [sorted(r) for r in result] == [["label", "score"]] * len(labels)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert sorted(r["label"] for r in result) == sorted(labels)
    by_label = {r["label"]: r["score"] for r in result}
    torch.testing.assert_close(torch.tensor([by_label[label] for label in labels]), expected, rtol=1e-5, atol=1e-6)


def test_pipeline_from_exported_folder(setup, tmp_path):
    _, _, exported, _, video = setup
    with isolated_remote_code(tmp_path):
        classifier = pipeline(TASK, model=str(exported), trust_remote_code=True)
        # config.json's custom_pipelines names the copied pipeline code.
        assert type(classifier).__name__ == "InstAPZeroShotVideoClassificationPipeline"
        assert type(classifier).__module__.startswith("transformers_modules.")
        result = classifier(video, candidate_labels=LABELS)
    expected = _direct_scores(exported, video, LABELS)
    assert expected.max() > 0.4  # the scores are informative, not uniform
    _check_result(result, LABELS, expected)
    assert result[0]["label"] == LABELS[int(expected.argmax())]


def test_registered_pipeline_on_a_plain_folder(setup):
    model, processor, _, plain, video = setup
    # Every save names the pipeline under `custom_pipelines`; a folder without it (saved elsewhere, or older) still
    # works through the task this package registers.
    config = json.loads((plain / "config.json").read_text())
    assert config.pop("custom_pipelines")
    (plain / "config.json").write_text(json.dumps(config))
    register_pipeline(overwrite=True)
    classifier = pipeline(TASK, model=str(plain))
    assert type(classifier) is InstAPZeroShotVideoClassificationPipeline
    _check_result(classifier(video, candidate_labels=LABELS), LABELS, _direct_scores(plain, video, LABELS))

    # Template, top_k, several videos, frames given as an array, and an instance built from objects.
    direct = InstAPZeroShotVideoClassificationPipeline(model=model, processor=processor, task=TASK)
    template = "a video of {}."
    templated = direct(video, candidate_labels=LABELS, hypothesis_template=template)
    _check_result(templated, LABELS, _direct_scores(plain, video, [template.format(x) for x in LABELS]))
    top = direct(video, candidate_labels=LABELS, top_k=2)
    assert [r["label"] for r in top] == [r["label"] for r in classifier(video, candidate_labels=LABELS)][:2]
    batch = direct([video, video], candidate_labels=LABELS[:2])
    assert len(batch) == 2 and batch[0] == batch[1] and len(batch[0]) == 2
    frames = coloured_frames()
    with torch.no_grad():
        logits = model(pixel_values=processor(videos=[frames])["pixel_values"], **processor.tokenize(LABELS))
    _check_result(direct(frames, candidate_labels=LABELS), LABELS, logits.logits_per_video[0].softmax(-1))
    with pytest.raises(ValueError, match="candidate_labels"):
        direct(video)


def test_rerank_with_the_matching_head(setup):
    model, processor, _, _, video = setup
    classifier = InstAPZeroShotVideoClassificationPipeline(model=model, processor=processor, task=TASK)
    result = classifier(video, candidate_labels=LABELS, rerank=True, rerank_k=3)
    with torch.no_grad():
        pixel_values = processor(videos=[video])["pixel_values"]
        text = processor.tokenize(LABELS)
        video_out = model.get_video_features(pixel_values)
        text_out = model.get_text_features(**text)
        dual = model(pixel_values=pixel_values, **text).logits_per_video[0]
        top = dual.topk(3).indices
        match = model.match_score(
            video_out.last_hidden_state.expand(3, -1, -1), text_out.last_hidden_state[top], text["attention_mask"][top]
        )[:, 1]
    expected = torch.zeros(len(LABELS))
    expected[top] = match.softmax(-1)
    _check_result(result, LABELS, expected)
    # The candidate outside the dual encoder's top 3 scores 0 and comes last.
    assert result[-1] == {"label": LABELS[int(dual.argmin())], "score": 0.0}
    # Re-ranking changes the scores (the matching head is not the dual encoder).
    assert not torch.allclose(expected, dual.softmax(-1))


_FRESH_SCRIPT = """
import json
import sys

from transformers import pipeline
from transformers.pipelines import SUPPORTED_TASKS

# Not a built-in task of this transformers: the remote pipeline shadows nothing.
assert "zero-shot-video-classification" not in SUPPORTED_TASKS

folder, video, labels, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
classifier = pipeline("zero-shot-video-classification", model=folder, trust_remote_code=True)
result = classifier(video, candidate_labels=labels)
assert [r["label"] for r in result] == [r["label"] for r in expected], (result, expected)
for got, want in zip(result, expected):
    assert abs(got["score"] - want["score"]) < 1e-5, (result, expected)
assert_no_project_imports()
print("PIPELINE-OK")
"""


def test_pipeline_in_a_fresh_process_without_instap(setup, tmp_path):
    model, processor, exported, _, video = setup
    expected = InstAPZeroShotVideoClassificationPipeline(model=model, processor=processor, task=TASK)(
        video, candidate_labels=LABELS
    )
    result = run_fresh(_FRESH_SCRIPT, [str(exported), video, json.dumps(LABELS), json.dumps(expected)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "PIPELINE-OK" in result.stdout
