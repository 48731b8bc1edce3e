"""Model cards: the repository's `model_card.md` (the card of `org/instap-l`: metadata, the paper's results marked as
such, code that runs) and `instap_train.model_card.generate_model_card` (a trained folder's own card and results)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from hub_helpers import make_model, make_processor, run_fresh, write_tiny_video
from huggingface_hub import ModelCard, ModelCardData

from instap_train.hub import export_for_hub
from instap_train.model_card import (
    check_card_metadata,
    eval_results_from_json,
    generate_model_card,
    paper_eval_results,
)

CARD = Path(__file__).resolve().parents[1] / "model_card.md"

# METHOD §8 (paper Tables 1 and 2), typed in independently of instap_train.model_card.
PAPER_T2V = {
    "msrvtt": (41.1, 65.2, 73.6),
    "didemo": (54.0, 78.2, 84.5),
    "msvd": (49.2, 77.0, 85.1),
    "lsmdc": (23.5, 42.7, 50.3),
    "activitynet_captions": (50.7, 77.2, 86.6),
}
PAPER_INSTVL_INSTANCE = {"img_1k": 50.25, "img_zero_1k": 41.94, "video_1k": 60.63}
PAPER_INSTVL_GLOBAL = {"img_1k": 99.20, "img_zero_1k": 88.70, "video_1k": 94.50}

RUN_ALIGN_JSON = {
    "global_step": 40,
    "results": {
        "img_1k": {
            "global": {
                "dual_encoder": {"t2v_r1": 12.5, "t2v_r5": 37.5, "t2v_r10": 62.5, "v2t_r1": 25.0, "v2t_r5": 50.0,
                                 "v2t_r10": 75.0, "r_mean": 43.75, "t2v_r_mean": 37.5},
                "reranked": {"t2v_r1": 25.0, "t2v_r5": 50.0, "t2v_r10": 62.5, "v2t_r1": 12.5, "v2t_r5": 37.5,
                             "v2t_r10": 87.5, "r_mean": 45.83},
                "chance_r_mean": 4.17,
            },
            "instance": {"dual_encoder": {"t2v_r1": 8.33, "t2v_r5": float("nan"), "t2v_r10": 50.0}},
        },
    },
}


def _cli_json(data: str, name: str, instance: bool) -> dict:
    """The shape `python -m instap_eval --output` writes (eval/cli.py `run`)."""
    metrics = {"t2v_r1": 31.0, "t2v_r5": 55.0, "t2v_r10": 70.0, "v2t_r1": 30.0, "v2t_r5": 52.0, "v2t_r10": 68.0,
               "t2v_r_mean": 52.0, "v2t_r_mean": 50.0, "r_mean": 51.0}
    part = {"dual_encoder": metrics, "reranked": {**metrics, "t2v_r1": 33.0}, "timings": {"dual_encoder_s": 1.0}}
    evaluation = {"global": part, "num_videos": 8, "num_texts": 8, "k": 128}
    if instance:
        evaluation["instance"] = {"dual_encoder": {**metrics, "t2v_r1": 21.0}, "timings": {}}
    return {"model": "out", "data": data, "format": "benchmark", "settings": {}, "results": {name: evaluation},
            "table": "..."}


def _metadata(text: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL).group(1))


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


# --------------------------------------------------------------------------------------------------------------------
# model_card.md
# --------------------------------------------------------------------------------------------------------------------


def test_repository_card_metadata():
    card = ModelCard.load(CARD)
    data = check_card_metadata(card)  # parses strictly and round-trips the model-index
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert {"google-bert/bert-large-uncased", "openai/clip-vit-large-patch14"} == set(data.base_model)
    assert {"video-text-retrieval", "video-language", "instance-aware", "custom_code"} <= set(data.tags)
    assert data.datasets and "org/instvl" in data.datasets
    # The Hub task closest to the shipped zero-shot video classification pipeline (X-CLIP's).
    assert data.pipeline_tag == "video-classification"
    assert data.model_name == "instap-l"


def test_repository_card_results_are_the_papers():
    results = ModelCard.load(CARD).data.eval_results
    assert all(r.source_url == "https://arxiv.org/abs/2604.08337" and "paper" in r.source_name for r in results)
    assert all("(paper)" in r.metric_name for r in results)
    found = {(r.task_type, r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in results}
    expected = {}
    for dataset, values in PAPER_T2V.items():
        for key, value in zip(("t2v_r1", "t2v_r5", "t2v_r10"), values):
            expected[("video-text-retrieval", dataset, None, key)] = value
    for split, value in PAPER_INSTVL_INSTANCE.items():
        expected[("instance-text-retrieval", "instvl", split, "t2v_r1")] = value
    for split, value in PAPER_INSTVL_GLOBAL.items():
        expected[("video-text-retrieval", "instvl", split, "t2v_r1")] = value
    assert found == expected
    # The generator's copy of the paper's numbers is the same.
    assert [vars(r) for r in paper_eval_results()] == [vars(r) for r in results]
    # The body's tables show the same numbers and say whose they are.
    text = CARD.read_text()
    assert "41.1 / 65.2 / 73.6" in text and "60.63" in text and "reported in the paper" in text.lower()


def test_metadata_check_rejects_a_broken_model_index():
    text = CARD.read_text()
    metadata = _metadata(text)
    del metadata["model-index"][0]["results"][0]["task"]  # a result without its task
    broken = "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n" + text.split("\n---\n", 1)[1]
    with pytest.raises(ValueError, match="model_index|model-index"):
        check_card_metadata(ModelCard(broken))
    with pytest.raises(ValueError):
        ModelCardData(**metadata)


# --------------------------------------------------------------------------------------------------------------------
# generate_model_card
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """What run_align.py leaves: an InstAPForPreTraining checkpoint, its processor and eval_results.json."""
    root = tmp_path_factory.mktemp("card")
    model = make_model(pretraining=True, lambda_inst=0.25, video_mask_ratio=0.6)
    folder = root / "run"
    model.save_pretrained(folder)
    make_processor(root / "tokenizer").save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps(RUN_ALIGN_JSON))
    return model, folder


def test_generated_card_from_run_align_results(trained_folder):
    model, folder = trained_folder
    card = generate_model_card(folder, repo_id="me/instap-tiny-run", dataset_id="me/instvl-synthetic")
    data = check_card_metadata(card)
    assert data.model_name == "instap-tiny-run" and "custom_code" in data.tags
    results = {(r.task_type, r.dataset_config, r.metric_type): r for r in data.eval_results}
    # Every finite measured value, and only those; the re-ranked ones apart; NaN left out.
    expected = {}
    for part, task in (("global", "video-text-retrieval"), ("instance", "instance-text-retrieval")):
        for scoring, metrics in RUN_ALIGN_JSON["results"]["img_1k"][part].items():
            if scoring == "chance_r_mean":
                continue
            suffix = "_reranked" if scoring == "reranked" else ""
            for key, value in metrics.items():
                if key != "t2v_r_mean" and math.isfinite(value):
                    expected[(task, "img_1k", key + suffix)] = value
    assert {k: r.metric_value for k, r in results.items()} == expected
    assert all(r.dataset_type == "me/instvl-synthetic" and r.dataset_split == "test" for r in results.values())
    assert all(r.source_url == "https://huggingface.co/me/instap-tiny-run/blob/main/eval_results.json"
               for r in results.values())
    assert not any("paper" in (r.source_name or "") for r in results.values())
    # The body describes this checkpoint from its config and weights.
    text = card.content
    total = sum(p.numel() for p in model.parameters())
    teacher = sum(p.numel() for p in model.distillation.teacher.parameters())
    assert f"{total:,} in the weights ({total - teacher:,} without the teacher)" in text
    assert "| preset | `tiny` |" in text and "`InstAPForPreTraining`" in text
    assert "lambda_inst = 0.25" in text and "ratio 0.6 (videos)" in text and "| frames, size | 4 frames" in text
    assert "after 40 training steps" in text and "| img_1k global, re-ranked | 25.00 |" in text
    assert 'AutoModel.from_pretrained("me/instap-tiny-run", trust_remote_code=True)' in text
    assert "kumar2026instap" in text
    # Saved and loaded back as README.md, the metadata is unchanged.
    card.save(folder / "README.md")
    assert ModelCard.load(folder / "README.md").data.to_dict() == data.to_dict()


def test_a_local_dataset_path_never_reaches_the_card(trained_folder, tmp_path):
    """run_align passes --dataset_name_or_path on: a local folder (an absolute path of this machine) is no Hub id."""
    _, folder = trained_folder
    local = tmp_path / "my" / "instvl"
    local.mkdir(parents=True)
    card = generate_model_card(folder, repo_id="me/instap-tiny-run", dataset_id=str(local))
    assert str(local) not in str(card) and str(tmp_path) not in str(card)
    assert {r.dataset_type for r in check_card_metadata(card).eval_results} == {"instvl"}


def test_generated_card_from_instap_eval_outputs_and_a_base_card(trained_folder, tmp_path):
    _, folder = trained_folder
    msrvtt = tmp_path / "msrvtt.json"
    msrvtt.write_text(json.dumps(_cli_json("/data/msrvtt_1k_test.json", "msrvtt_1k_test", instance=False)))
    instvl = _cli_json("org/instvl", "video_1k", instance=True)
    card = generate_model_card(folder, [msrvtt, instvl], repo_id="me/run", base_card=CARD)
    data = check_card_metadata(card)
    by_key = {(r.task_type, r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert by_key[("video-text-retrieval", "msrvtt_1k_test", None, "t2v_r1")] == 31.0
    assert by_key[("video-text-retrieval", "msrvtt_1k_test", None, "t2v_r1_reranked")] == 33.0
    assert by_key[("video-text-retrieval", "org/instvl", "video_1k", "r_mean")] == 51.0
    assert by_key[("instance-text-retrieval", "org/instvl", "video_1k", "t2v_r1")] == 21.0
    assert not any(key[3].startswith(("t2v_r_mean", "v2t_r_mean")) for key in by_key)  # only the 7 card metrics
    # The paper's numbers stay out of this checkpoint's model-index, unless asked for (with their source).
    assert not any("paper" in (r.source_name or "") for r in data.eval_results)
    merged = generate_model_card(folder, instvl, repo_id="me/run", base_card=CARD, include_base_results=True)
    paper = [r for r in merged.data.eval_results if r.source_url == "https://arxiv.org/abs/2604.08337"]
    assert len(paper) == len(paper_eval_results())
    # The base card's metadata and prose are kept; its usage code points at the new repository.
    assert set(data.base_model) == {"google-bert/bert-large-uncased", "openai/clip-vit-large-patch14"}
    assert "org/instvl" in data.datasets
    text = card.content
    assert "## Intended uses and limitations" in text and "## Training data" in text
    assert text.count("## Citation") == 1 and text.count("## How to use") == 1
    # Not the base card's introduction or model description: they are about InstAP-L and the paper's numbers.
    assert "About the evaluation numbers" not in text and "## Model description" not in text
    assert "InstAP-L" not in text.split("## Evaluation results (this checkpoint)")[0]
    assert "## Evaluation results (reported in the paper)" in text  # kept, and labelled as the paper's
    assert '"org/instap-l"' not in text and 'AutoProcessor.from_pretrained("me/run"' in text


_CARD_CODE_RUNNER = """
import json
import sys

cards = json.loads(open(sys.argv[1]).read())
for name, blocks in cards.items():
    namespace = {"__name__": "__card__"}
    for block in blocks:
        exec(compile(block, name, "exec"), namespace)
    print(f"CARD-OK {name}")
assert_no_project_imports()
"""


def test_card_code_runs_against_an_exported_folder(tmp_path):
    """The code blocks of model_card.md and of a generated card run as written (repository id replaced by a tiny
    exported folder) in a fresh process where the InstAP packages cannot be imported."""
    folder = tmp_path / "exported"
    export_for_hub(make_model(pretraining=True), make_processor(tmp_path / "tokenizer"), folder,
                   repo_id="me/instap-tiny")
    write_tiny_video(tmp_path / "video.mp4")
    repo_card = _python_blocks(CARD.read_text())
    generated = _python_blocks((folder / "README.md").read_text())
    assert len(repo_card) == 3 and len(generated) == 3
    assert all("org/instap-l" in block for block in repo_card[:2])
    cards = {
        "model_card.md": [block.replace("org/instap-l", str(folder)) for block in repo_card],
        "README.md": [block.replace("me/instap-tiny", str(folder)) for block in generated],
    }
    (tmp_path / "cards.json").write_text(json.dumps(cards))
    result = run_fresh(_CARD_CODE_RUNNER, [str(tmp_path / "cards.json")], tmp_path, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "CARD-OK model_card.md" in result.stdout and "CARD-OK README.md" in result.stdout
    # The snippets print probabilities and pipeline results.
    assert "'label':" in result.stdout and "tensor(" in result.stdout


def test_eval_results_from_json_accepts_both_formats():
    results = eval_results_from_json([RUN_ALIGN_JSON, _cli_json("org/instvl", "img_zero_1k", instance=False)])
    splits = {r.dataset_config for r in results}
    assert splits == {"img_1k", "img_zero_1k"}
    assert all(torch.isfinite(torch.tensor(float(r.metric_value))) for r in results)
    assert all(r.source_name is None for r in results)  # no repository: not marked
