"""The two training scripts end to end on a tiny synthetic InstVL: stage 1, then stage 2 from it, then loading."""

import json

import pytest
import torch
from hub_helpers import run_fresh, write_tiny_video
from transformers import AutoModel

import modeling_instap  # noqa: F401  (registers the Auto classes)
from modeling_instap import InstAPForMaskedVideoModeling, InstAPForPreTraining, InstAPModel
from modeling_instap.modeling_instap import STAGE2_LOSS_WEIGHTS, loss_term_weight


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from instap_train.demo_data import ensure_synthetic_instvl

    return ensure_synthetic_instvl(str(tmp_path_factory.mktemp("instvl")), num_train=32, num_test=12)


def common_args(synthetic_dir, output_dir, steps):
    return [
        "--output_dir", str(output_dir), "--synthetic_dir", synthetic_dir, "--synthetic_num_train", "32",
        "--synthetic_num_test", "12", "--max_steps", str(steps), "--per_device_train_batch_size", "4",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
        "--use_cpu",
    ]


def test_stage1_then_stage2_then_load(synthetic_dir, tmp_path, capsys):
    from instap_train.run_align import main as run_align
    from instap_train.run_pretrain import main as run_pretrain

    stage1_dir = tmp_path / "stage1"
    result = run_pretrain(common_args(synthetic_dir, stage1_dir, 2) + ["--num_frames", "4"])
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    stage1 = InstAPForMaskedVideoModeling.from_pretrained(stage1_dir)

    stage2_dir = tmp_path / "stage2"
    results = run_align(
        common_args(synthetic_dir, stage2_dir, 3)
        + ["--stage1_checkpoint", str(stage1_dir), "--eval_splits", "video_1k", "--rerank_k", "4"]
    )
    # Stage 2 started from stage 1's video encoder: with 3 steps it moved, but the teacher is frozen and identical.
    stage2 = InstAPForPreTraining.from_pretrained(stage2_dir)
    for name, tensor in stage1.distillation.teacher.state_dict().items():
        torch.testing.assert_close(stage2.distillation.teacher.state_dict()[name], tensor)

    # The evaluation table covers global and instance retrieval, dual encoder and re-ranked.
    assert set(results) == {"video_1k"}
    assert {part: set(results["video_1k"][part]) >= {"dual_encoder", "reranked"} for part in ("global", "instance")} == {
        "global": True, "instance": True
    }
    for part in ("global", "instance"):
        for scoring in ("dual_encoder", "reranked"):
            metrics = results["video_1k"][part][scoring]
            six = [metrics[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)]
            assert metrics["r_mean"] == pytest.approx(sum(six) / 6)
    saved = json.loads((stage2_dir / "eval_results.json").read_text())
    assert saved["global_step"] == 3
    assert "| video_1k instance, re-ranked |" in capsys.readouterr().out

    # The folder carries its own model card with the measured results.
    card = (stage2_dir / "README.md").read_text()
    assert "model-index" in card and "video_1k" in card

    # The output folder is a checkpoint AutoModel loads directly ...
    backbone = AutoModel.from_pretrained(stage2_dir)
    assert isinstance(backbone, InstAPModel)
    # ... and, in a fresh process without the project, loads through every Auto class and the pipeline.
    video = write_tiny_video(tmp_path / "clip.mp4")
    result = run_fresh(_FRESH_LOAD_SCRIPT, [str(stage2_dir), video], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "FRESH-LOAD-OK" in result.stdout


_FRESH_LOAD_SCRIPT = """
import sys

from transformers import (
    AutoModel, AutoModelForPreTraining, AutoProcessor, AutoTokenizer, AutoVideoProcessor, pipeline,
)

folder, video = sys.argv[1:3]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(model).__name__ == "InstAPModel", type(model)
assert type(AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)).__name__ == "InstAPForPreTraining"
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == "InstAPProcessor", type(processor)
video_processor = AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(video_processor).__name__ == "InstAPVideoProcessor", type(video_processor)
assert AutoTokenizer.from_pretrained(folder)("a red square")["input_ids"]
classifier = pipeline("zero-shot-video-classification", model=folder, trust_remote_code=True)
scores = classifier(video, candidate_labels=["a red square", "a blue circle"])
assert sorted(s["label"] for s in scores) == ["a blue circle", "a red square"], scores
assert abs(sum(s["score"] for s in scores) - 1) < 1e-5, scores
assert_no_project_imports()
print("FRESH-LOAD-OK")
"""


def test_log_reports_every_term_averaged(synthetic_dir, tmp_path, monkeypatch):
    """Each loss term and both temperatures are logged as separate scalars."""
    from transformers import TrainerCallback

    from instap_train.run_align import main as run_align

    seen = []

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    import instap_train.run_align as script

    class CapturingTrainer(script.InstAPAlignTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Capture())

    monkeypatch.setattr(script, "InstAPAlignTrainer", CapturingTrainer)
    run_align(
        common_args(synthetic_dir, tmp_path / "out", 2)
        + ["--eval_splits", "video_1k", "--eval_strategy", "steps", "--eval_steps", "2", "--rerank_k", "2"]
    )
    train_logs = [log for log in seen if "loss" in log]
    assert len(train_logs) == 2
    for log in train_logs:
        terms = {t: log[f"loss_{t}"] for t in STAGE2_LOSS_WEIGHTS}
        # The logged total is the weighted sum of the logged terms (one step per log: the means are the values).
        config = InstAPForPreTraining.config_class.from_pretrained(tmp_path / "out")
        total = sum(loss_term_weight(config, t) * v for t, v in terms.items())
        assert log["loss"] == pytest.approx(total, rel=1e-3, abs=1e-3)
        assert 0.001 <= log["temperature"] <= 0.5 and 0.001 <= log["instance_temperature"] <= 0.5
    # Retrieval on the held-out split during training, over all 12 pairs of the split; r_mean is the six recalls'.
    eval_logs = [log for log in seen if "eval_r_mean" in log]
    assert len(eval_logs) == 1 and eval_logs[0]["eval_num_pairs"] == 12
    recalls = [eval_logs[0][f"eval_{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)]
    assert eval_logs[0]["eval_r_mean"] == pytest.approx(sum(recalls) / 6)


def test_streaming_training_runs(synthetic_dir, tmp_path):
    """`--streaming`: the split is read as a `datasets.IterableDataset` and decoded in the loader."""
    from instap_train.run_align import main as run_align

    torch.set_num_threads(2)  # the demo defaults set 1 thread while the script runs, and give the caller's back
    results = run_align(
        common_args(synthetic_dir, tmp_path / "stream", 2)
        + ["--streaming", "--eval_splits", "", "--hub_model_id", "org/instap-test"]
    )
    assert torch.get_num_threads() == 2
    assert results == {}
    assert (tmp_path / "stream" / "model.safetensors").exists()
    # --hub_model_id without --push_to_hub: a Hub-ready export and a dry run of the upload, nothing sent.
    assert (tmp_path / "stream" / "hub" / "config.json").exists()
    assert (tmp_path / "stream" / "hub" / "modeling_instap.py").exists()
