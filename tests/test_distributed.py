"""Multi-process training on CPU: real DDP (gloo) and DeepSpeed ZeRO-2/ZeRO-3, launched with `torchrun`.

Each launch runs `tests/distributed_worker.py` once (module-scoped fixtures); the worker asserts the distributed
type and world size it was given and writes one JSON per rank, which the tests below check.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers_training import SyntheticAlignDataset, align_training_arguments, collate_align_batch, tiny_config

from modeling_instap import InstAPForPreTraining

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS_DIR, "distributed_worker.py")
STAGE2_TERMS = ("loss_rec", "loss_vtc", "loss_vtm", "loss_mlm", "loss_inst_vtc", "loss_inst_vtm", "loss_inst_mlm")
LAUNCH_TIMEOUT_S = 240

requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install '.[deepspeed]')"
)


def launch(mode: str, num_processes: int, out_dir: str, *args: str, env: dict | None = None) -> list[dict]:
    """Run the worker under torchrun on `num_processes` CPU processes; return the per-rank results."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
        WORKER, mode, "--out", out_dir, *args,
    ]
    # One thread per process: the CI machines have 2 cores.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    completed = subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=os.path.dirname(TESTS_DIR)
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        if "cannot be 0 to view" in output:
            pytest.fail(
                "DeepSpeed cannot broadcast InstAP's 0-dim temperature parameters (`p.data.view(torch.uint8)`, "
                "new in deepspeed 0.19.8); deepspeed<=0.19.7 works.\n" + output[-3000:]
            )
        pytest.fail(f"torchrun {mode} exited with {completed.returncode}:\n{output[-6000:]}")
    return [json.load(open(os.path.join(out_dir, f"rank{rank}.json"))) for rank in range(num_processes)]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> str:
    """A saved tiny stage-2 model (no dropout) that every run starts from."""
    folder = str(tmp_path_factory.mktemp("init"))
    torch.manual_seed(0)
    InstAPForPreTraining(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gather_results(tmp_path_factory) -> list[dict]:
    return launch("gather", 2, str(tmp_path_factory.mktemp("gather")))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory, init_dir) -> list[dict]:
    # ACCELERATE_USE_CPU=1: without it, torchrun/accelerate on CPU leave each process training alone (NO).
    out = str(tmp_path_factory.mktemp("ddp"))
    return launch("ddp", 2, out, "--init", init_dir, env={"ACCELERATE_USE_CPU": "1"})


@pytest.fixture(scope="module")
def zero2_results(tmp_path_factory, init_dir) -> tuple[list[dict], str]:
    out = str(tmp_path_factory.mktemp("zero2"))
    return launch("deepspeed", 2, out, "--stage", "2", "--init", init_dir), out


@pytest.fixture(scope="module")
def zero3_results(tmp_path_factory, init_dir) -> tuple[list[dict], str]:
    out = str(tmp_path_factory.mktemp("zero3"))
    return launch("deepspeed", 1, out, "--stage", "3", "--init", init_dir), out


def _losses(logs: list[dict]) -> list[float]:
    return [log["loss"] for log in logs]


def _check_reloaded_checkpoint(saved_dir: str, init_dir: str) -> None:
    """`trainer.save_model` output reloads as a plain model: finite outputs, trained student, untouched teacher."""
    reloaded = InstAPForPreTraining.from_pretrained(saved_dir).eval()
    initial = InstAPForPreTraining.from_pretrained(init_dir).eval()
    reloaded_state, initial_state = reloaded.state_dict(), initial.state_dict()
    assert all(torch.isfinite(t).all() for t in reloaded_state.values())
    assert any(not torch.equal(initial_state[k], v) for k, v in reloaded_state.items() if k.startswith("instap."))
    teacher_keys = [k for k in reloaded_state if k.startswith("distillation.teacher.")]
    assert teacher_keys and all(torch.equal(initial_state[k], reloaded_state[k]) for k in teacher_keys)
    batch = collate_align_batch([SyntheticAlignDataset(length=4)[i] for i in range(4)])
    with torch.no_grad():
        outputs = reloaded(**batch)
    terms = [outputs[name] for name in STAGE2_TERMS]
    assert all(term is not None and math.isfinite(float(term)) for term in terms)
    assert math.isfinite(float(outputs.loss))


# --------------------------------------------------------------------------------------------------------------------
# model level: the all-gathered contrastive losses
# --------------------------------------------------------------------------------------------------------------------


def test_gathered_contrastive_losses_and_gradients_match_one_process(gather_results):
    """VTC and instance VTC (3 and 4 instances on the two ranks) over 2 processes equal one process on the
    concatenated batch, and so do their DDP-averaged parameter gradients (float64, deterministic masks)."""
    for result in gather_results:
        assert result["world_size"] == 2
        assert result["instances_per_rank"] == [3, 4]
        assert result["loss_vtc"] == pytest.approx(result["reference_loss_vtc"], rel=1e-12)
        assert result["loss_inst_vtc"] == pytest.approx(result["reference_loss_inst_vtc"], rel=1e-12)
        # L_rec is a local mean: with equal local batches the mean over ranks is the global mean.
        assert result["mean_loss_rec"] == pytest.approx(result["reference_loss_rec"], rel=1e-12)
        assert result["missing_grads"] == [] and result["num_grads"] > 100
        assert result["max_grad_error"] <= 1e-10 * result["max_reference_grad"]


def test_local_contrastive_form_equals_the_global_form_in_gradient(gather_results):
    """`contrastive_loss_form="local"`: each rank scores its own rows against the gathered columns; the mean loss
    over ranks and the DDP-averaged gradients equal one process on the global batch (also with a rank that has no
    instances)."""
    for result in gather_results:
        for case in ("all", "without_last"):
            numbers = result["local_form"][case]
            assert numbers["mean_losses"] == pytest.approx(numbers["reference_losses"], rel=1e-12)
            assert numbers["max_grad_error"] <= 1e-10 * result["max_reference_grad"]


def test_rank_without_instances_joins_the_instance_gathers(gather_results):
    """A rank whose batch has no instance neither hangs the others nor changes the instance VTC: it takes part in
    the gathers with zero rows, and the losses and DDP-averaged gradients equal one process on the global batch."""
    for result in gather_results:
        assert result["without_last_loss_inst_vtc"] == pytest.approx(
            result["reference_without_last_loss_inst_vtc"], rel=1e-12
        )
        assert result["without_last_max_grad_error"] <= 1e-10 * result["max_reference_grad"]


# --------------------------------------------------------------------------------------------------------------------
# DDP through InstAPAlignTrainer
# --------------------------------------------------------------------------------------------------------------------


def test_ddp_trains_in_sync_on_two_cpu_processes(ddp_results):
    for result in ddp_results:
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["num_processes"] == 2
        assert result["global_step"] == 4
        assert result["params_equal_across_ranks"] and result["params_finite"] and result["teacher_unchanged"]
        for log in result["train_logs"]:
            assert all(name in log and math.isfinite(log[name]) for name in STAGE2_TERMS), log
    assert ddp_results[0]["train_logs"] == ddp_results[1]["train_logs"]


def test_ddp_nonfinite_loss_on_one_rank_is_skipped_on_every_rank(ddp_results):
    """Step 3's loss is NaN on rank 1 only; both ranks count it and take a zero-gradient step together."""
    for result in ddp_results:
        assert result["nonfinite_steps"] == 1
        skipped = result["train_logs"][2]
        assert skipped["loss"] == 0.0 and skipped["grad_norm"] == 0.0 and skipped["nonfinite_steps"] == 1
        assert result["train_logs"][3]["loss"] > 0


def test_ddp_consecutive_nonfinite_losses_stop_every_rank(ddp_results):
    """NaN on rank 1 at steps 2 and 3 with max_consecutive_nonfinite=2: both ranks raise at step 2 (none hangs)
    and no checkpoint is written after the error."""
    for result in ddp_results:
        assert result["raised_at_step"] == 2
        assert result["checkpoints_after_raise"] == ["checkpoint-1", "checkpoint-2"]


# --------------------------------------------------------------------------------------------------------------------
# DeepSpeed through TrainingArguments(deepspeed=...)
# --------------------------------------------------------------------------------------------------------------------


def test_ddp_with_gradient_checkpointing_trains_on_batches_without_instances(ddp_results):
    """The instance-only parameters get no gradient there; DDP must not fail on the next step."""
    for result in ddp_results:
        assert result["checkpointed_no_instance_steps"] == 2


@requires_deepspeed
def test_deepspeed_zero2_two_processes_matches_ddp_and_reloads(zero2_results, ddp_results, init_dir):
    results, out_dir = zero2_results
    for result in results:
        assert result["distributed_type"] == "DistributedType.DEEPSPEED"
        assert result["num_processes"] == 2 and result["zero_stage"] == 2
        assert result["global_step"] == 4 and result["nonfinite_steps"] == 1
        # Same data, start and NaN step (step 3) as the DDP run: the same trajectory up to the NaN step. After it
        # the two differ by design: DDP skips that step's AdamW update, while under DeepSpeed the engine owns the
        # update and applies the zero gradient (AdamW's momentum and weight decay still move the weights).
        zero2, ddp = _losses(result["train_logs"]), _losses(ddp_results[0]["train_logs"])
        assert zero2[:3] == pytest.approx(ddp[:3], rel=1e-5)
        assert math.isfinite(zero2[3]) and zero2[3] != pytest.approx(ddp[3], rel=1e-7)
    _check_reloaded_checkpoint(os.path.join(out_dir, "saved"), init_dir)


@requires_deepspeed
def test_deepspeed_zero3_one_process_matches_plain_training_and_reloads(zero3_results, init_dir, tmp_path):
    from instap_train import InstAPAlignTrainer

    results, out_dir = zero3_results
    (result,) = results
    assert result["distributed_type"] == "DistributedType.DEEPSPEED"
    assert result["num_processes"] == 1 and result["zero_stage"] == 3 and result["global_step"] == 3
    plain = InstAPAlignTrainer(
        model=InstAPForPreTraining.from_pretrained(init_dir),
        args=align_training_arguments(str(tmp_path), max_steps=3),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=collate_align_batch,
    )
    plain.train()
    plain_logs = [log for log in plain.state.log_history if "loss" in log]
    assert _losses(result["train_logs"]) == pytest.approx(_losses(plain_logs), rel=1e-5)
    _check_reloaded_checkpoint(os.path.join(out_dir, "saved"), init_dir)


@requires_deepspeed
def test_deepspeed_zero3_stops_at_the_first_nonfinite_loss(zero3_results):
    (result,), _ = zero3_results
    assert result["raised_at_step"] == 1
    assert result["checkpoints_after_raise"] == ["checkpoint-1"]


@requires_deepspeed
@pytest.mark.xfail(
    strict=True,
    reason="DeepSpeed 0.19 ZeRO-3 re-applies a parameter's previous gradient in a step that gives it none "
    "(stage3 `averaged_gradients` reuse stale `__param_id_to_grad_partition`); for InstAP, the attention pool and "
    "tau_inst move on batches without instances. Remove this mark when DeepSpeed fixes it.",
)
def test_deepspeed_zero3_parameters_without_gradient_stay_put(zero3_results):
    (result,), _ = zero3_results
    assert result["pool_change_without_gradient"] == 0.0
