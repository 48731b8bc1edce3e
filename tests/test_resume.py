"""Checkpoint resume, determinism and the non-finite guard of `InstAPAlignTrainer` (one CPU process).

The model draws masks (teacher-guided multinomial), VTM negatives, MLM masks, dropout and drop-path from torch's
global RNG. A resumed run reproduces an uninterrupted one only if the checkpoint restores that RNG state
(`rng_state.pth`), the optimizer and scheduler states, and the position in the (shuffled) data order.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers_training import SyntheticAlignDataset, align_training_arguments, collate_align_batch
from transformers import TrainerCallback

from instap_train import InstAPAlignTrainer, NonFiniteLossError
from modeling_instap import InstAPConfig, InstAPForPreTraining

TOTAL_STEPS = 4
SAVE_EVERY = 2


class StopAfterStep(TrainerCallback):
    """Simulates a crash: training ends right after `step`, and anything after the last checkpoint is lost."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = False


class NaNPixelsOnCalls:
    """Collator double: the batches of the listed calls (1-based) get NaN pixel values."""

    def __init__(self, calls: set[int]):
        self.calls = calls
        self.count = 0

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate_align_batch(samples)
        self.count += 1
        if self.count in self.calls:
            batch["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
        return batch


def _model(seed: int) -> InstAPForPreTraining:
    # The tiny preset as shipped: dropout 0.1 and drop-path 0.1 on, so that their RNG draws are covered too.
    torch.manual_seed(seed)
    return InstAPForPreTraining(InstAPConfig.from_preset("tiny"))


def _trainer(output_dir: str, dataset_length: int, model_seed: int = 0, callbacks=(), **overrides):
    args = align_training_arguments(
        output_dir, max_steps=TOTAL_STEPS, save_strategy="steps", save_steps=SAVE_EVERY, **overrides
    )
    return InstAPAlignTrainer(
        model=_model(model_seed),
        args=args,
        train_dataset=SyntheticAlignDataset(length=dataset_length),
        data_collator=collate_align_batch,
        callbacks=list(callbacks),
    )


def _step_losses(trainer) -> dict[int, float]:
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


@pytest.mark.parametrize(
    ("dataset_length", "crash_after", "resume_from"),
    [
        (16, 3, 2),  # 8 steps per epoch: resume in the middle of epoch 0 (skipped batches, RNG restored after)
        (4, 3, 2),  # 2 steps per epoch: resume exactly at an epoch boundary (RNG restored before the new epoch)
    ],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, dataset_length, crash_after, resume_from):
    uninterrupted = _trainer(str(tmp_path / "full"), dataset_length)
    uninterrupted.train()
    reference_losses = _step_losses(uninterrupted)
    reference_params = {n: p.detach().clone() for n, p in uninterrupted.model.named_parameters()}

    crashed_dir = str(tmp_path / "crashed")
    crashed = _trainer(crashed_dir, dataset_length, callbacks=[StopAfterStep(crash_after)])
    crashed.train()
    assert crashed.state.global_step == crash_after
    checkpoint = os.path.join(crashed_dir, f"checkpoint-{resume_from}")
    assert os.path.isfile(os.path.join(checkpoint, "rng_state.pth"))
    assert not os.path.exists(os.path.join(crashed_dir, f"checkpoint-{resume_from + SAVE_EVERY}"))

    # A differently initialised model: everything must come from the checkpoint.
    resumed = _trainer(crashed_dir, dataset_length, model_seed=123)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == TOTAL_STEPS
    # The log history holds the checkpoint's steps 1..resume_from and the resumed run's steps after them.
    resumed_losses = _step_losses(resumed)
    assert sorted(resumed_losses) == list(range(1, TOTAL_STEPS + 1))
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(reference_losses[step], rel=1e-6, abs=1e-7), step
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param.detach(), reference_params[name], rtol=1e-6, atol=1e-7, msg=name)


def test_nonfinite_steps_are_counted_and_parameters_stay_finite(tmp_path):
    trainer = InstAPAlignTrainer(
        model=_model(0),
        args=align_training_arguments(str(tmp_path), max_steps=4),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=NaNPixelsOnCalls({2, 4}),
        max_consecutive_nonfinite=2,
    )
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.nonfinite_steps == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log.get("nonfinite_steps", 0) for log in logs] == [0, 1, 1, 2]
    # The skipped steps log no per-term values (they are not finite) but the finite steps log all of them.
    assert "loss_vtc" not in logs[1] and "loss_vtc" in logs[2]


def test_nonfinite_step_gives_zero_gradient(tmp_path):
    """With plain SGD (no momentum, no decay), a NaN step leaves every parameter exactly as it was."""
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer = InstAPAlignTrainer(
        model=_model(0),
        args=align_training_arguments(str(tmp_path), max_steps=3, optim="sgd", weight_decay=0.0),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=NaNPixelsOnCalls({2}),
        callbacks=[Snapshot()],
    )
    trainer.train()
    first, skipped, last = snapshots
    assert all(torch.equal(first[name], skipped[name]) for name in first)
    assert any(not torch.equal(skipped[name], last[name]) for name in first)


def test_nonfinite_step_skips_the_adamw_update(tmp_path):
    """With AdamW, momentum and weight decay: a NaN step still leaves every parameter exactly as it was."""
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer = InstAPAlignTrainer(
        model=_model(0),
        args=align_training_arguments(str(tmp_path), max_steps=3, weight_decay=0.05),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=NaNPixelsOnCalls({2}),
        callbacks=[Snapshot()],
    )
    trainer.train()
    first, skipped, last = snapshots
    assert trainer.nonfinite_steps == 1
    assert all(torch.equal(first[name], skipped[name]) for name in first)
    assert any(not torch.equal(skipped[name], last[name]) for name in first)


def test_consecutive_nonfinite_steps_raise_before_a_broken_checkpoint(tmp_path):
    trainer = InstAPAlignTrainer(
        model=_model(0),
        args=align_training_arguments(str(tmp_path), max_steps=6, save_strategy="steps", save_steps=1),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=NaNPixelsOnCalls({2, 3, 4}),
        max_consecutive_nonfinite=3,
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        trainer.train()
    # Calls 2 and 3 were skipped (steps 2 and 3 saved, with finite weights); call 4 raised before step 4 ended.
    assert trainer.state.global_step == 3 and trainer.nonfinite_steps == 3
    checkpoints = sorted(name for name in os.listdir(tmp_path) if name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    last = InstAPForPreTraining.from_pretrained(os.path.join(tmp_path, "checkpoint-3"))
    assert all(torch.isfinite(p).all() for p in last.parameters())


def test_resume_true_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    """A kill during a checkpoint write leaves `checkpoint-8/` with only the config and code: skip it, take 4."""
    from instap_train.factory import resolve_resume_checkpoint

    for step, files in ((4, ("model.safetensors", "trainer_state.json", "config.json")), (8, ("config.json",))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    for value in (True, "True", "true"):
        assert resolve_resume_checkpoint(value, str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-8" in caplog.text and "model weights" in caplog.text
    for value in (None, False, "False", ""):
        assert resolve_resume_checkpoint(value, str(tmp_path)) is None
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), "unused") == str(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="incomplete.*model weights, trainer_state.json"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-8"), "unused")
    with pytest.raises(ValueError, match="not a folder"):
        resolve_resume_checkpoint(str(tmp_path / "True-ish"), "unused")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "checkpoint-8"))


@pytest.fixture(scope="module")
def synthetic_instvl(tmp_path_factory):
    from instap_train.demo_data import ensure_synthetic_instvl

    return ensure_synthetic_instvl(str(tmp_path_factory.mktemp("instvl")), num_train=24, num_test=4)


def _real_pipeline_trainer(output_dir, dataset_dir, workers, model_seed=0, callbacks=()):
    """The scripts' data path: InstVL records decoded in `workers` DataLoader workers, the real processor with
    random frame sampling, random resized crop and flip, caption sub-sampling and instance crops."""
    from instap_processing import InstAPDataCollator, load_instvl
    from instap_train.demo_data import build_caption_tokenizer
    from instap_train.factory import DataArguments, build_processor, build_train_dataset

    config = InstAPConfig.from_preset("tiny")
    tokenizer = build_caption_tokenizer(load_instvl(dataset_dir, "train", streaming=False), os.path.join(output_dir, "tok"))
    processor = build_processor(config, tokenizer, num_frames=4, max_length=16)
    dataset = build_train_dataset(dataset_dir, DataArguments(), 4, 4, seed=0, max_instances_per_sample=2, stage=2)
    args = align_training_arguments(
        output_dir, max_steps=TOTAL_STEPS, save_strategy="steps", save_steps=SAVE_EVERY, per_device_train_batch_size=4,
        dataloader_num_workers=workers, data_seed=0,
    )
    torch.manual_seed(model_seed)
    return InstAPAlignTrainer(
        model=InstAPForPreTraining(config), args=args, train_dataset=dataset,
        data_collator=InstAPDataCollator(processor, text=True, instances=True, training=True), callbacks=list(callbacks),
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_with_random_augmentation(tmp_path, synthetic_instvl, workers):
    """Frame sampling, crop and flip are drawn from (seed, epoch, sample id): the batch collated right after a resume
    (before the Trainer restores its RNG) is the one the uninterrupted run saw."""
    full = _real_pipeline_trainer(str(tmp_path / "full"), synthetic_instvl, workers)
    full.train()
    reference = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    crashed = _real_pipeline_trainer(str(tmp_path / "crashed"), synthetic_instvl, workers, callbacks=[StopAfterStep(3)])
    crashed.train()
    resumed = _real_pipeline_trainer(str(tmp_path / "crashed"), synthetic_instvl, workers, model_seed=123)
    resumed.train(resume_from_checkpoint=str(tmp_path / "crashed" / f"checkpoint-{SAVE_EVERY}"))
    assert _step_losses(resumed) == pytest.approx(_step_losses(full), rel=1e-6, abs=1e-7)
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param.detach(), reference[name], rtol=1e-6, atol=1e-7, msg=name)
