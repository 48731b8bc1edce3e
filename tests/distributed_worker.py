"""Worker processes for `tests/test_distributed.py`, launched with `torchrun` (never imported by pytest).

Modes (first argument):

- `gather`: model-level check that the all-gathered contrastive losses (VTC, instance VTC with unequal instance
  counts per rank) and their gradients in a W-process run equal one process on the concatenated batch.
- `ddp`: a few stage-2 steps through `InstAPAlignTrainer` under real DDP on CPU (gloo), including a non-finite
  loss on one rank only.
- `deepspeed`: a few stage-2 steps under DeepSpeed ZeRO-2 or ZeRO-3 (`TrainingArguments(deepspeed=...)`), then
  `trainer.save_model` and a reload with `InstAPForPreTraining.from_pretrained`.

Each rank writes `rank{r}.json` into the output folder; the test reads them. Assertions that only make sense
inside the run (distributed type, world size) are made here, so that a wrong launch fails the process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
sys.path.insert(0, TESTS_DIR)

from helpers_training import (  # noqa: E402
    SyntheticAlignDataset,
    align_training_arguments,
    collate_align_batch,
    tiny_config,
)

from modeling_instap import InstAPForPreTraining  # noqa: E402


def _write(out_dir: str, rank: int, result: dict) -> None:
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


# --------------------------------------------------------------------------------------------------------------------
# gather: the distributed contrastive losses equal the single-process ones on the global batch
# --------------------------------------------------------------------------------------------------------------------


def _gather_model() -> InstAPForPreTraining:
    # Deterministic forward in training mode: teacher masks by bottom-k mean attention (no sampling), crops
    # masked by the teacher the same way, no dropout or drop-path, and float64 so that the comparison is tight.
    torch.manual_seed(0)
    config = tiny_config(mask_strategy="mean_attention", crop_mask_strategy="teacher")
    return InstAPForPreTraining(config).to(torch.float64).train()


def _contrastive_terms_and_grads(model: InstAPForPreTraining, batch: dict) -> dict:
    model.zero_grad(set_to_none=True)
    batch = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in batch.items()}
    outputs = model(**batch)
    (outputs.loss_vtc + outputs.loss_inst_vtc).backward()
    grads = {
        name: param.grad.detach().clone()
        for name, param in model.named_parameters()
        if param.grad is not None
    }
    return {
        "loss_vtc": outputs.loss_vtc.detach(),
        "loss_inst_vtc": outputs.loss_inst_vtc.detach(),
        "loss_rec": outputs.loss_rec.detach(),
        "grads": grads,
    }


def run_gather(out_dir: str) -> None:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_batch = 2
    dataset = SyntheticAlignDataset(length=local_batch * world, instance_counts=(1, 2, 3))
    samples = [dataset[i] for i in range(len(dataset))]
    model = _gather_model()

    # Reference first, before the process group exists: the gathers are then identities (one process).
    reference = _contrastive_terms_and_grads(model, collate_align_batch(samples))
    # Second case: the last rank's samples have no instance (its batch has no instance keys at all).
    without_last = [
        dict(s, instance_pixel_values=[], instance_input_ids=[]) if i >= local_batch * (world - 1) else s
        for i, s in enumerate(samples)
    ]
    reference_without_last = _contrastive_terms_and_grads(model, collate_align_batch(without_last))

    dist.init_process_group("gloo")
    try:
        assert dist.get_world_size() == world == 2 and dist.get_backend() == "gloo"
        local_samples = samples[rank * local_batch : (rank + 1) * local_batch]
        local = _contrastive_terms_and_grads(model, collate_align_batch(local_samples))
        num_instances = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
        local_instances = sum(len(s["instance_pixel_values"]) for s in local_samples)
        dist.all_gather(num_instances, torch.tensor([local_instances]))
        # DDP's gradient averaging, done by hand on the per-rank gradients.
        max_grad_error = 0.0
        missing = []
        for name, reference_grad in reference["grads"].items():
            grad = local["grads"].get(name)
            if grad is None:
                missing.append(name)
                continue
            dist.all_reduce(grad)
            grad /= world
            max_grad_error = max(max_grad_error, float((grad - reference_grad).abs().max()))
        # Must not hang: the rank without instances joins the instance gathers with zero rows.
        local_without = _contrastive_terms_and_grads(
            model, collate_align_batch(without_last[rank * local_batch : (rank + 1) * local_batch])
        )
        max_grad_error_without = 0.0
        for name, reference_grad in reference_without_last["grads"].items():
            grad = local_without["grads"].get(name, torch.zeros_like(reference_grad))
            dist.all_reduce(grad)
            grad /= world
            max_grad_error_without = max(max_grad_error_without, float((grad - reference_grad).abs().max()))
        rec = local["loss_rec"].clone()
        dist.all_reduce(rec)
        # The local-loss form (each rank its own rows against the gathered columns): the same mean loss over ranks
        # and the same DDP-averaged gradients, with and without a rank lacking instances.
        model.config.contrastive_loss_form = "local"
        local_form = {}
        for case, batch_samples, ref in (
            ("all", local_samples, reference),
            ("without_last", without_last[rank * local_batch : (rank + 1) * local_batch], reference_without_last),
        ):
            out = _contrastive_terms_and_grads(model, collate_align_batch(batch_samples))
            error = 0.0
            for name, reference_grad in ref["grads"].items():
                grad = out["grads"].get(name, torch.zeros_like(reference_grad))
                dist.all_reduce(grad)
                error = max(error, float((grad / world - reference_grad).abs().max()))
            losses = torch.stack([out["loss_vtc"].detach(), out["loss_inst_vtc"].detach()]).clone()
            dist.all_reduce(losses)
            local_form[case] = {"max_grad_error": error, "mean_losses": (losses / world).tolist(),
                                "reference_losses": [float(ref["loss_vtc"]), float(ref["loss_inst_vtc"])]}
        model.config.contrastive_loss_form = "global"
        result = {
            "local_form": local_form,
            "world_size": world,
            "instances_per_rank": [int(n) for n in num_instances],
            "loss_vtc": float(local["loss_vtc"]),
            "loss_inst_vtc": float(local["loss_inst_vtc"]),
            "reference_loss_vtc": float(reference["loss_vtc"]),
            "reference_loss_inst_vtc": float(reference["loss_inst_vtc"]),
            "mean_loss_rec": float(rec / world),
            "reference_loss_rec": float(reference["loss_rec"]),
            "max_grad_error": max_grad_error,
            "max_reference_grad": max(float(g.abs().max()) for g in reference["grads"].values()),
            "num_grads": len(reference["grads"]),
            "missing_grads": missing,
            "without_last_loss_inst_vtc": float(local_without["loss_inst_vtc"]),
            "reference_without_last_loss_inst_vtc": float(reference_without_last["loss_inst_vtc"]),
            "without_last_max_grad_error": max_grad_error_without,
        }
        _write(out_dir, rank, result)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------------
# ddp: InstAPAlignTrainer under real DDP on CPU
# --------------------------------------------------------------------------------------------------------------------


class LossPoisonedOnOneRank(InstAPForPreTraining):
    """Test double: the loss of the listed training forward calls on one rank is NaN, on the others untouched.

    A non-finite loss that stays local (a bf16 overflow in a local term) is what the trainer's guard must agree
    on across ranks; NaN inputs would not do, as the gathered VTC spreads them to every rank.
    """

    _auto_class = None  # a test double: its checkpoints need no remote code
    poison_rank: int = 1
    poison_calls: frozenset[int] = frozenset()

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        if self.training:
            self.training_calls = getattr(self, "training_calls", 0) + 1
            if int(os.environ["RANK"]) == self.poison_rank and self.training_calls in self.poison_calls:
                outputs.loss = outputs.loss * float("nan")
        return outputs


def _poisoned_model(init_dir: str, poison_calls: set[int], poison_rank: int = 1) -> LossPoisonedOnOneRank:
    model = LossPoisonedOnOneRank.from_pretrained(init_dir)
    model.poison_calls = frozenset(poison_calls)
    model.poison_rank = poison_rank
    return model


def _train_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def _checkpoints(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("checkpoint-"))


def _train_until_error(trainer) -> int | None:
    """Train; the global step at which `NonFiniteLossError` stopped training, or None if it finished."""
    from instap_train import NonFiniteLossError

    try:
        trainer.train()
    except NonFiniteLossError:
        return trainer.state.global_step
    return None


def run_ddp(out_dir: str, init_dir: str) -> None:
    import torch.distributed as dist
    from accelerate.utils import DistributedType

    from instap_train import InstAPAlignTrainer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dataset = SyntheticAlignDataset(length=16)
    # Step 3's loss is NaN on rank 1 only: both ranks must skip it together.
    model = _poisoned_model(init_dir, {3})
    teacher_before = {k: v.clone() for k, v in model.distillation.teacher.state_dict().items()}
    args = align_training_arguments(os.path.join(out_dir, "run"), max_steps=4)
    trainer = InstAPAlignTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate_align_batch, max_consecutive_nonfinite=2
    )
    accelerator = trainer.accelerator
    assert accelerator.distributed_type == DistributedType.MULTI_CPU, accelerator.distributed_type
    assert accelerator.num_processes == world == 2 and dist.get_world_size() == 2 and dist.get_backend() == "gloo"
    trainer.train()
    # DDP wraps `model` during training; its parameters are the same tensors.
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])
    checksums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(checksums, checksum)
    result = {
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "nonfinite_steps": trainer.nonfinite_steps,
        "train_logs": _train_logs(trainer),
        "params_equal_across_ranks": all(torch.equal(checksums[0], c) for c in checksums),
        "params_finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "teacher_unchanged": all(
            torch.equal(teacher_before[k], v) for k, v in model.distillation.teacher.state_dict().items()
        ),
    }

    # Two non-finite losses in a row on rank 1 only: every rank must stop with the error at the same step
    # (a rank-local decision would leave the healthy ranks waiting in the next collective).
    model = _poisoned_model(init_dir, {2, 3})
    raise_dir = os.path.join(out_dir, "raise")
    args = align_training_arguments(raise_dir, max_steps=4, save_strategy="steps", save_steps=1)
    trainer = InstAPAlignTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate_align_batch, max_consecutive_nonfinite=2
    )
    result["raised_at_step"] = _train_until_error(trainer)
    dist.barrier()
    result["checkpoints_after_raise"] = _checkpoints(raise_dir)

    # Gradient checkpointing (the stage-2 recipe) with batches without instances: the attention pool and τ_inst
    # get no gradient, which DDP tolerates only with unused-parameter detection on.
    args = align_training_arguments(
        os.path.join(out_dir, "no_instances"), max_steps=2, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = InstAPAlignTrainer(
        model=InstAPForPreTraining.from_pretrained(init_dir),
        args=args,
        train_dataset=SyntheticAlignDataset(length=16, instance_counts=(0,)),
        data_collator=collate_align_batch,
    )
    trainer.train()
    result["checkpointed_no_instance_steps"] = trainer.state.global_step
    _write(out_dir, rank, result)


# --------------------------------------------------------------------------------------------------------------------
# deepspeed: ZeRO-2 / ZeRO-3 through TrainingArguments(deepspeed=...)
# --------------------------------------------------------------------------------------------------------------------


def _deepspeed_config(stage: int) -> dict:
    """The shipped `train_scripts/configs/ds_zero{stage}.json`, sizes "auto", less `train_batch_size`.

    On CPU, `TrainingArguments(use_cpu=True)` starts torch.distributed but not `deepspeed.comm`, so the DeepSpeed
    config that ZeRO-3's `zero.Init` builds inside `from_pretrained` sees a world size of 1 and rejects the
    resolved `train_batch_size` (micro batch x world) with 2 processes. Without the key DeepSpeed derives it (micro
    batch x accumulation x world). On GPUs `deepspeed.comm` is up before the model is built and "auto" is fine;
    on CPU `use_cpu=False` is worse (accelerate then counts one process).
    """
    path = os.path.join(REPO_ROOT, "train_scripts", "configs", f"ds_zero{stage}.json")
    with open(path) as handle:
        config = json.load(handle)
    config.pop("train_batch_size")
    return config


class DropInstancesAfterFirstBatch:
    """Collator double: the first batch keeps its instances, later batches have none (an image batch without
    boxes), so the instance-only parameters (attention pool, τ_inst) get no gradient from the second step on."""

    def __init__(self):
        self.calls = 0

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate_align_batch(samples)
        self.calls += 1
        if self.calls > 1:
            batch = {key: value for key, value in batch.items() if not key.startswith("instance_")}
        return batch


def _instance_only_parameters_move_without_gradient(out_dir: str, init_dir: str) -> float:
    """Largest change of the attention pool's weights in a step whose batch has no instance (SGD, no decay).

    It must be 0: those parameters get no gradient in that step.
    """
    from deepspeed.utils import safe_get_full_fp32_param
    from transformers import TrainerCallback

    from instap_train import InstAPAlignTrainer

    snapshots = []

    class SnapshotAttentionPool(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            pool = model.instap.attention_pool
            snapshots.append([safe_get_full_fp32_param(p).clone() for p in pool.parameters()])

    args = align_training_arguments(
        out_dir, max_steps=2, deepspeed=_deepspeed_config(3), optim="sgd", weight_decay=0.0, max_grad_norm=0.0
    )
    trainer = InstAPAlignTrainer(
        model=InstAPForPreTraining.from_pretrained(init_dir),
        args=args,
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=DropInstancesAfterFirstBatch(),
        callbacks=[SnapshotAttentionPool()],
    )
    trainer.train()
    return max(float((after - before).abs().max()) for before, after in zip(*snapshots))


def run_deepspeed(out_dir: str, stage: int, init_dir: str) -> None:
    import torch.distributed as dist
    from accelerate.utils import DistributedType
    from transformers.integrations import is_deepspeed_zero3_enabled

    from instap_train import InstAPAlignTrainer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # TrainingArguments first, so that under ZeRO-3 `from_pretrained` partitions the weights as it loads them.
    # ZeRO-2 runs the DDP test's schedule (NaN loss on rank 1 at step 3), so both trajectories must agree.
    max_steps, poison_calls = (4, {3}) if stage == 2 else (3, set())
    args = align_training_arguments(
        os.path.join(out_dir, "run"), max_steps=max_steps, deepspeed=_deepspeed_config(stage)
    )
    assert is_deepspeed_zero3_enabled() == (stage == 3)
    model = _poisoned_model(init_dir, poison_calls)
    dataset = SyntheticAlignDataset(length=16)
    trainer = InstAPAlignTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_align_batch)
    accelerator = trainer.accelerator
    assert accelerator.distributed_type == DistributedType.DEEPSPEED, accelerator.distributed_type
    assert accelerator.num_processes == world and dist.get_world_size() == world
    zero_stage = accelerator.state.deepspeed_plugin.zero_stage
    assert zero_stage == stage, zero_stage
    trainer.train()
    saved_dir = os.path.join(out_dir, "saved")
    trainer.save_model(saved_dir)
    dist.barrier()
    result = {
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "zero_stage": zero_stage,
        "global_step": trainer.state.global_step,
        "train_logs": _train_logs(trainer),
        "nonfinite_steps": trainer.nonfinite_steps,
    }
    if stage == 3:
        # A non-finite loss under ZeRO-3 stops training at once (the step cannot be skipped there).
        raise_dir = os.path.join(out_dir, "raise")
        args = align_training_arguments(
            raise_dir, max_steps=3, save_strategy="steps", save_steps=1, deepspeed=_deepspeed_config(3)
        )
        trainer = InstAPAlignTrainer(
            model=_poisoned_model(init_dir, {2}, poison_rank=0),
            args=args,
            train_dataset=dataset,
            data_collator=collate_align_batch,
        )
        result["raised_at_step"] = _train_until_error(trainer)
        result["checkpoints_after_raise"] = _checkpoints(raise_dir)
        result["pool_change_without_gradient"] = _instance_only_parameters_move_without_gradient(
            os.path.join(out_dir, "no_instances"), init_dir
        )
    _write(out_dir, rank, result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["gather", "ddp", "deepspeed"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--init", help="a saved tiny InstAPForPreTraining to start from (ddp, deepspeed)")
    parser.add_argument("--stage", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(1)
    if options.mode == "gather":
        run_gather(options.out)
    elif options.mode == "ddp":
        run_ddp(options.out, options.init)
    else:
        run_deepspeed(options.out, options.stage, options.init)


if __name__ == "__main__":
    main()
