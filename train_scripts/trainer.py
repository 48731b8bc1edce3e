"""`transformers.Trainer` subclasses for the two InstAP stages.

Both trainers are thin: the model computes every loss term (see `InstAPForPreTraining`); the trainers

- log each term and the temperatures as separate scalars, averaged over the logging window and over processes;
- keep the teacher out of the optimizer (it never requires grad) and take biases, norms and temperatures out of
  weight decay (METHOD §4 recipe);
- skip a step whose loss is not finite on any process (zero gradient on every rank, counted) and stop with
  `NonFiniteLossError` after `max_consecutive_nonfinite` such steps in a row, before a broken checkpoint can be
  written (under DeepSpeed ZeRO-3, which cannot skip a step, at the first one);
- (stage 2) evaluate with dual-encoder retrieval recall on a held-out split.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.utils import logging

from instap_eval.zero_shot import backbone_of
from instap_processing.streaming import BadSampleTracker
from modeling_instap.modeling_instap import STAGE2_LOSS_WEIGHTS

logger = logging.get_logger(__name__)

STAGE2_LOSS_TERMS = tuple(STAGE2_LOSS_WEIGHTS)
STAGE1_LOSS_TERMS = ("rec",)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss stayed NaN/inf for too many consecutive steps."""


def no_decay_parameter(name: str, parameter: torch.Tensor) -> bool:
    """Biases, norms (1-D weights) and the temperatures are not decayed."""
    return parameter.ndim <= 1 or name.endswith("temperature")


class _InstAPTrainer(Trainer):
    """Shared machinery: per-term logging, non-finite steps, decay groups."""

    loss_terms: Sequence[str] = ()

    def __init__(
        self,
        *args,
        max_consecutive_nonfinite: int = 10,
        max_bad_samples: int | None = None,
        max_bad_fraction: float | None = None,
        min_samples_for_fraction: int = 50,
        **kwargs,
    ):
        training_args = kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # Which parameters get a gradient depends on the batch (without instances the attention pool and
            # τ_inst get none). Trainer turns DDP's unused-parameter detection off under gradient checkpointing,
            # and DDP then fails on the next step after such a batch.
            training_args.ddp_find_unused_parameters = True
        super().__init__(*args, **kwargs)
        # The model returns per-batch means: Trainer must scale for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.nonfinite_steps = 0
        self._consecutive_nonfinite = 0
        # Per term: running sum and count since the last log (counts differ: absent terms are not logged as 0).
        self._term_sums = torch.zeros(len(self.loss_terms), dtype=torch.float64)
        self._term_counts = torch.zeros(len(self.loss_terms), dtype=torch.float64)
        self._last_temperatures: dict[str, float] = {}
        self._skip_optimizer_step = False
        # Instances the processor left out (box mostly out of view after augmentation), this process, since start.
        self.dropped_instances = 0
        # Bad samples skipped by the data (every DataLoader worker of this process; the batches carry the counts)
        # and samples read, this process, since start. The caps apply to these, whatever the worker count.
        self.sample_counts = BadSampleTracker(max_bad_samples, max_bad_fraction, min_samples_for_fraction)

    def create_optimizer(self, model=None):
        """The Trainer's AdamW, whose `step` is skipped after a non-finite loss in its accumulation window.

        A zero gradient alone is not a skipped step: AdamW would still apply its momentum and weight decay. Not
        under DeepSpeed, whose engine owns the update (ZeRO-2 then applies the zero gradient; ZeRO-3 stops).
        """
        optimizer = super().create_optimizer(model)
        if not self.is_deepspeed_enabled and not getattr(optimizer, "_instap_skippable", False):
            update = optimizer.step

            def step(*args, **kwargs):
                if self._skip_optimizer_step:
                    self._skip_optimizer_step = False
                    return None
                return update(*args, **kwargs)

            optimizer.step = step
            optimizer._instap_skippable = True
        return optimizer

    def get_train_dataloader(self):
        """InstVL data: batches of one media type, decoded in the workers, each sample decoded by one rank only.

        - A map-style `InstVLMapDataset`: `MediaTypeBatchSampler` in a seeded order all ranks agree on, sharded by
          accelerate (`BatchSamplerShard`).
        - A streamed `InstVLIterableDataset`: its source is split per rank once (`split_dataset_by_node`) and the
          loader is *not* passed through `accelerator.prepare`, whose `IterableDatasetShard` would make every rank
          decode every sample and keep 1/N. Trainer still moves each batch to the device.
        """
        from instap_processing.streaming import (
            EpochAwareDataLoader,
            InstVLIterableDataset,
            MediaTypeBatchSampler,
        )

        dataset = self.train_dataset
        if isinstance(dataset, InstVLIterableDataset):
            return self._streaming_dataloader(dataset, EpochAwareDataLoader)
        if not hasattr(dataset, "media_types"):
            return super().get_train_dataloader()

        # accelerate's BatchSamplerShard hands rank r the batches r, r + world, ...; the sampler yields all of them.
        sampler = MediaTypeBatchSampler(
            dataset.media_types,
            self._train_batch_size,
            seed=self.args.seed,
            world_size=self.accelerator.num_processes,
            shard=False,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def _streaming_dataloader(self, dataset, loader_class):
        import copy

        import datasets
        from datasets.distributed import split_dataset_by_node

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world > 1:
            if not isinstance(dataset.source, datasets.IterableDataset):
                raise ValueError("Multi-process streaming needs a `datasets.IterableDataset` source to split by rank.")
            dataset = copy.copy(dataset)
            dataset.source = split_dataset_by_node(dataset.source, rank=rank, world_size=world)
        return loader_class(
            dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [name for name, param in model.named_parameters() if not no_decay_parameter(name, param)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        dropped = inputs.pop("num_dropped_instances", None)
        skipped = inputs.pop("num_skipped_samples", None)
        if model.training:
            self.dropped_instances += int(dropped) if dropped is not None else 0
            self.sample_counts.add_counts(int(skipped) if skipped is not None else 0, int(inputs["pixel_values"].shape[0]))
        crops = inputs.get("instance_pixel_values")
        if crops is not None and crops.dtype == torch.uint8:  # the collator's uint8_instance_crops: normalise here
            if self.processing_class is None or not hasattr(self.processing_class, "normalize_instance_crops"):
                raise ValueError("uint8 instance crops need the InstAPProcessor as the trainer's processing_class.")
            inputs["instance_pixel_values"] = self.processing_class.normalize_instance_crops(
                crops, dtype=inputs["pixel_values"].dtype
            )
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            loss = self._guard_nonfinite(model, loss)
            self._record_terms(outputs)
        return (loss, outputs) if return_outputs else loss

    def _loss_is_finite_everywhere(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite on every process.

        The decision must be the same on all ranks: the replacement loss below skips the backward of the
        all-gathers (VTC), whose collectives the other ranks would then wait for, and a rank raising
        `NonFiniteLossError` alone would leave the others hanging in the next collective.
        """
        finite = torch.isfinite(loss.detach()).all()
        if self.accelerator.num_processes > 1:
            nonfinite_ranks = self.accelerator.reduce((~finite).to(torch.float32).reshape(1), reduction="sum")
            return bool(nonfinite_ranks.item() == 0)
        return bool(finite)

    def _guard_nonfinite(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        if self._loss_is_finite_everywhere(loss):
            self._consecutive_nonfinite = 0
            return loss
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            # The zero below cannot be built under ZeRO-3 (parameters hold no data outside their module's
            # forward), and a backward that gives no parameter a gradient makes ZeRO-3 (DeepSpeed 0.19) apply
            # the previous step's gradients again: no step can be skipped, so stop at once.
            raise NonFiniteLossError(
                f"The loss was not finite at step {self.state.global_step}. Under DeepSpeed ZeRO-3 the step "
                "cannot be skipped (DeepSpeed would re-apply the previous gradients); resume from the last "
                "checkpoint after checking the data or lowering the learning rate, or train with ZeRO-2."
            )
        if self._consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"The loss was not finite for {self._consecutive_nonfinite} consecutive steps (step "
                f"{self.state.global_step}, {self.nonfinite_steps} in total); stopping before a broken checkpoint "
                "is saved. Lower the learning rate, check the data, or raise max_consecutive_nonfinite."
            )
        logger.warning(
            f"Non-finite loss at step {self.state.global_step}; the optimizer update of this step is skipped "
            f"({self.nonfinite_steps} such steps so far)."
        )
        self._skip_optimizer_step = True
        # A zero that still touches every trainable parameter, so DDP's reducer sees all of them.
        return sum((param * 0.0).sum() for param in model.parameters() if param.requires_grad)

    def global_sample_counts(self) -> tuple[int, int]:
        """(skipped, read) summed over processes (a collective under DDP)."""
        counts = torch.tensor(
            [float(self.sample_counts.num_bad), float(self.sample_counts.num_seen)], dtype=torch.float64
        )
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        return int(counts[0]), int(counts[1])

    def _record_terms(self, outputs) -> None:
        for index, name in enumerate(self.loss_terms):
            value = outputs.get(f"loss_{name}")
            if value is not None and torch.isfinite(value.detach()):
                self._term_sums[index] += float(value.detach())
                self._term_counts[index] += 1
        for name in ("temperature", "instance_temperature"):
            value = outputs.get(name)
            if value is not None:
                self._last_temperatures[name] = float(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (evaluation logs carry eval_* keys)
            sums, counts = self._term_sums.clone(), self._term_counts.clone()
            extra = torch.tensor([float(self.dropped_instances), float(self.sample_counts.num_bad)], dtype=torch.float64)
            if self.accelerator.num_processes > 1:
                stacked = torch.cat([sums, counts, extra]).to(self.accelerator.device)
                stacked = self.accelerator.reduce(stacked, reduction="sum").cpu()
                sums, counts, extra = stacked[: len(sums)], stacked[len(sums) : -2], stacked[-2:]
            dropped, skipped = extra[:1], extra[1:]
            for index, name in enumerate(self.loss_terms):
                if counts[index] > 0:
                    logs[f"loss_{name}"] = round(float(sums[index] / counts[index]), 4)
            logs.update({name: round(value, 5) for name, value in self._last_temperatures.items()})
            if self.nonfinite_steps:
                logs["nonfinite_steps"] = self.nonfinite_steps
            if dropped.item():
                logs["dropped_instances"] = int(dropped.item())
            logs["skipped_samples"] = int(skipped.item())  # total since the start, over workers and processes
            self._term_sums.zero_()
            self._term_counts.zero_()
        super().log(logs, start_time)


class InstAPPretrainTrainer(_InstAPTrainer):
    """Stage 1: masked video modelling with the frozen CLIP teacher (`InstAPForMaskedVideoModeling`)."""

    loss_terms = STAGE1_LOSS_TERMS


class InstAPAlignTrainer(_InstAPTrainer):
    """Stage 2: instance-aware alignment (`InstAPForPreTraining`).

    `evaluate` reports dual-encoder video↔text retrieval (R@1/5/10 both ways and mean recall) on the evaluation
    dataset, whose batches are collated like training batches (global captions; instances are ignored).
    """

    loss_terms = STAGE2_LOSS_TERMS

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Evaluation batches need their own collator: no augmentation, whole captions (the training collator
        # random-crops, flips and sub-samples caption sentences).
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            shuffle=False,
            collate_fn=self.eval_data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        from instap_eval import video_text_retrieval_metrics

        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.accelerator.unwrap_model(self.model)
        backbone = backbone_of(model)
        was_training = backbone.training
        backbone.eval()
        video_embeds, text_embeds = [], []
        for batch in dataloader:
            batch = self._prepare_inputs(batch)
            video = backbone.get_video_features(batch["pixel_values"]).pooler_output
            text = backbone.get_text_features(batch["input_ids"], batch.get("attention_mask")).pooler_output
            video_embeds.append(self.accelerator.gather_for_metrics(video).float().cpu())
            text_embeds.append(self.accelerator.gather_for_metrics(text).float().cpu())
        backbone.train(was_training)
        if not video_embeds:
            raise ValueError("The evaluation dataset yielded no batch.")
        videos, texts = torch.cat(video_embeds), torch.cat(text_embeds)
        # One caption per clip in the evaluation split: text i describes video i.
        scores = videos @ texts.t()
        retrieval = video_text_retrieval_metrics(scores, torch.arange(texts.shape[0]))
        metrics = {
            f"{metric_key_prefix}_{key}": value
            for key, value in retrieval.items()
            if not (isinstance(value, float) and math.isnan(value))
        }
        metrics[f"{metric_key_prefix}_num_pairs"] = texts.shape[0]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


__all__ = [
    "InstAPAlignTrainer",
    "InstAPPretrainTrainer",
    "NonFiniteLossError",
    "STAGE1_LOSS_TERMS",
    "STAGE2_LOSS_TERMS",
    "no_decay_parameter",
]
