"""Per-GPU memory of stage-2 InstAP training (bf16, AdamW) under DeepSpeed ZeRO-2 and ZeRO-3, with and without
gradient checkpointing, and a CPU measurement that says how far the activation model is off.

    .venv/bin/python benchmarks/estimate_memory.py                       # instap-l and instap-b, 8 and 200 GPUs
    .venv/bin/python benchmarks/estimate_memory.py --presets instap-l --gpus 64 --videos-per-gpu 16

Model states (parameters counted on the meta device). Trainable parameters P under bf16 mixed precision with
AdamW cost 16 bytes each (ZeRO paper, Rajbhandari et al. 2020): 2 (bf16 weights) + 2 (bf16 gradients) + 4 (fp32
master) + 8 (Adam moments). ZeRO-2 shards gradients and optimizer states over the G GPUs (2P + 14P/G); ZeRO-3 also
shards the weights (16P/G). The frozen CLIP teacher F costs 2F in bf16, sharded (2F/G) only under ZeRO-3.
Buffers: ZeRO-2's all-gather bucket (`allgather_bucket_size` 2e8 elements of the shipped json, bf16); ZeRO-3's live
gathered parameters, bounded by `stage3_max_live_parameters` (DeepSpeed default 1e9 elements): every encoder is
reused several times per step (vision twice, text four times, fusion three times), so with the default
`stage3_max_reuse_distance` the parameters can stay gathered; that bound is what the table uses.

Activations: what autograd keeps from the forward for the backward, in bf16 (e = 2 bytes per element), summed over
the passes of one step at their real token counts (`stage2_passes`). Per transformer layer of s tokens, b
sequences, width h (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", with
fused/SDPA attention so the 5·a·s²·b score term is absent, MLP width 4h):

    self-attention + MLP layer:  (16·e + m)·s·b·h        (= 34·s·b·h bytes in bf16 with m = 2 dropout masks)
    + cross-attention (fusion):  (5·e + m')·s·b·h + 2·e·s_kv·b·h     (queries side, then keys/values)

with m = 2 dropout masks in BERT layers (bool, 1 byte each, on GPUs), 0 in the ViT (no dropout), m' = 1 (measured
per layer on CPU: 16.05 units for a ViT block, 16 + 2 masks for a BERT layer). The tensor the cross-attention
reads (video tokens) is counted once per pass, e·s_kv·b·h_v. With gradient checkpointing (every ViT/BERT layer)
only each layer's input stays, e·s·b·h. Not checkpointed, always kept: pixels (the conv input), text embeddings, the
reconstruction heads and their fp32 loss, the attention pool (one pre-norm cross-attention block with MLP: 15·e
per query token-channel, 4·e per key token-channel), the MLM heads (4·e·h per token plus the fp32 log-softmax over
the vocabulary) and the contrastive losses over the gathered batch (fp32: 16 bytes per entry of the (G·B)²
global matrix, 13 per entry of the (G·N)² instance matrix, N instances per GPU) -- these grow with G² and no ZeRO
stage or checkpointing touches them.

Also listed, not summed into the saved activations: the teacher targets (K layers, bf16, alive through the
forward), the teacher's forward transient (all its hidden states, no grad, before the student runs) and the
backward transient (the larger of one recomputed layer under checkpointing and the gradients of the contrastive
matrices, 8 bytes per entry). Peak = model states + buffers + max(teacher transient, saved activations + teacher
targets + backward transient). Not modelled: the CUDA context and NCCL buffers (about 1 GiB), allocator caching
and fragmentation, and activation gradients beyond one layer. These GPU numbers are not measured (no GPU here).

Validation (`--no-validate` skips it): a small config (width 256, 8 frames at 112², 4 instances per sample) in
bf16 on CPU; every tensor autograd saves in the forward is caught with `torch.autograd.graph.saved_tensors_hooks`
and its storage counted once (parameters excluded), with and without (reentrant) checkpointing, and with and
without instances. That is an exact count of what autograd keeps, against the formula above for the same shapes.
Two CPU facts are matched there, not in the GPU estimate: dropout masks are kept in bf16 (2 bytes), and attention
dropout is off in the validation config, because with it CPU SDPA falls back to the math kernel that stores the fp32
score matrices (the fused CUDA kernels apply dropout without storing them).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, replace

import torch

from modeling_instap import InstAPConfig, InstAPForPreTraining  # noqa: E402
from modeling_instap.masking import visible_count  # noqa: E402

GIB = 1024**3
BF16 = 2
FP32 = 4
ADAM_BYTES_PER_TRAINABLE = {"weights": 2, "gradients": 2, "optimizer": 12}  # fp32 master 4 + Adam m, v 8
ZERO2_ALLGATHER_BUCKET_ELEMENTS = 2e8  # train_scripts/configs/ds_zero2.json
ZERO3_MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed default of stage3_max_live_parameters


@dataclass(frozen=True)
class Stage2Step:
    """The per-GPU shape of one stage-2 step (METHOD §4: 16 frames at 224², ρ 0.8, 4 instances per sample)."""

    videos_per_gpu: int = 32
    frames: int = 16
    image_size: int = 224
    mask_ratio: float = 0.8
    instances_per_sample: int = 4
    crop_mask_ratio: float = 0.8
    text_length: int = 32
    num_gpus: int = 8

    @property
    def instances_per_gpu(self) -> int:
        return self.videos_per_gpu * self.instances_per_sample


@dataclass
class EncoderPass:
    """One run of a stack of ViT or BERT layers over `sequences` x `tokens` at `width`."""

    name: str
    sequences: int
    tokens: int
    width: int
    layers: int
    dropout_mask_bytes: int  # per token-channel per layer: BERT 2 masks (1 byte each on GPUs), ViT 0
    cross_tokens: int = 0  # fusion layers: video tokens attended to, and their width
    cross_width: int = 0
    extra_bytes: float = 0.0  # non-layer tensors of this pass (inputs, heads, losses), bf16 unless stated

    def layer_bytes(self, e: int) -> float:
        """Everything one layer keeps for its backward (no checkpointing)."""
        s, b, h = self.tokens, self.sequences, self.width
        per_layer = (16 * e + self.dropout_mask_bytes) * s * b * h
        if self.cross_tokens:  # one more dropout mask, after the cross-attention output
            per_layer += (5 * e + self.dropout_mask_bytes / 2) * s * b * h + 2 * e * self.cross_tokens * b * h
        return per_layer

    def saved_bytes(self, e: int, checkpointing: bool) -> float:
        cross_input = e * self.cross_tokens * self.sequences * self.cross_width  # read by every fusion layer
        if checkpointing:
            layers = self.layers * e * self.tokens * self.sequences * self.width
        else:
            layers = self.layers * self.layer_bytes(e)
        return layers + cross_input + self.extra_bytes


@dataclass
class ActivationEstimate:
    passes: list[EncoderPass]
    gathered_losses: float  # contrastive matrices over the gathered batch
    global_contrastive_entries: int
    instance_contrastive_entries: int
    teacher_targets: float
    teacher_transient: float
    e: int = BF16

    def saved(self, checkpointing: bool) -> float:
        return sum(p.saved_bytes(self.e, checkpointing) for p in self.passes) + self.gathered_losses

    def backward_transient(self, checkpointing: bool) -> float:
        """The largest short-lived extra of the backward: the gradients of the fp32 contrastive matrices (two
        per matrix, 8 bytes per entry, while the loss is differentiated), or, with checkpointing, one layer's
        recomputed activations. They come one after the other, so the larger one counts."""
        loss_gradients = 8 * (self.global_contrastive_entries + self.instance_contrastive_entries)
        recompute = max(p.layer_bytes(self.e) for p in self.passes) if checkpointing else 0.0
        return max(loss_gradients, recompute)


def stage2_passes(
    config: InstAPConfig, step: Stage2Step, e: int = BF16, mask_bytes: int = 1, with_instances: bool = True,
    contrastive_loss_form: str | None = None,
) -> ActivationEstimate:
    """The encoder passes of `InstAPForPreTraining.forward` for one GPU's batch, with their token counts.

    `e`: bytes per activation element; `mask_bytes`: bytes per element of a dropout mask (bool on CUDA; the CPU
    kernel keeps it in the activation dtype).
    """
    vision, text = config.vision_config, config.text_config
    B, T, L = step.videos_per_gpu, step.frames, step.text_length
    patches = (step.image_size // vision.patch_size) ** 2
    crop_patches = (config.crop_size // vision.patch_size) ** 2
    ratio = config.image_mask_ratio if T == 1 else step.mask_ratio
    crop_ratio = config.image_mask_ratio if T == 1 else step.crop_mask_ratio
    scene_tokens = T * visible_count(patches, ratio)
    crop_tokens = T * visible_count(crop_patches, crop_ratio)
    hv, ht, V = vision.hidden_size, text.hidden_size, text.vocab_size
    text_layers, fusion_layers = text.fusion_layer, text.num_fusion_layers
    K = config.teacher_num_layers
    teacher = config.teacher_config
    teacher_dim = teacher.projection_dim
    N = step.instances_per_gpu if with_instances else 0
    masks = 2 * mask_bytes if text.hidden_dropout_prob > 0 else 0  # after attention and after the MLP

    def pixels(count: int, size: int) -> float:
        return e * count * T * 3 * size * size  # the Conv3d keeps its input

    def text_embedding(count: int) -> float:
        return (e + mask_bytes) * count * L * ht  # embedding LayerNorm input + dropout mask

    def mlm_head(count: int) -> float:
        # dense, GELU, LayerNorm, decoder inputs (4·e·h per token), then fp32 log-softmax over the vocabulary.
        return count * L * (4 * e * ht + FP32 * V)

    def vision_output(count: int, tokens: int) -> float:
        return e * count * tokens * hv  # post-LayerNorm input

    rec_heads = K * (e * B * scene_tokens * hv + (e + 3 * FP32) * B * scene_tokens * teacher_dim)
    passes = [
        EncoderPass("scene video (ViT)", B, scene_tokens, hv, vision.num_hidden_layers, 0,
                    extra_bytes=pixels(B, step.image_size) + vision_output(B, scene_tokens) + rec_heads),
        EncoderPass("caption text (VTC)", B, L, ht, text_layers, masks, extra_bytes=text_embedding(B)),
        EncoderPass("VTM fusion, 3B pairs", 3 * B, L, ht, fusion_layers, masks, scene_tokens, hv),
        EncoderPass("MLM text", B, L, ht, text_layers, masks, extra_bytes=text_embedding(B)),
        EncoderPass("MLM fusion", B, L, ht, fusion_layers, masks, scene_tokens, hv, extra_bytes=mlm_head(B)),
    ]
    if N:
        pool = N * e * (15 * crop_tokens + 4 * scene_tokens) * hv
        passes += [
            EncoderPass("instance crops (ViT)", N, crop_tokens, hv, vision.num_hidden_layers, 0,
                        extra_bytes=pixels(N, config.crop_size) + vision_output(N, crop_tokens) + pool),
            EncoderPass("instance text", N, L, ht, text_layers, masks, extra_bytes=text_embedding(N)),
            EncoderPass("instance VTM fusion, 3N pairs", 3 * N, L, ht, fusion_layers, masks, 1, hv),
            EncoderPass("instance MLM text", N, L, ht, text_layers, masks, extra_bytes=text_embedding(N)),
            EncoderPass(
                "instance MLM fusion", N, L, ht, fusion_layers, masks, crop_tokens, hv, extra_bytes=mlm_head(N)
            ),
        ]
    global_n = step.num_gpus * B
    instance_n = step.num_gpus * N
    # The global form scores every gathered row on every rank ((G·B)², (G·N)²); the local form only this rank's rows
    # against the gathered columns (B·G·B, N·G·N): G times less.
    form = contrastive_loss_form or config.contrastive_loss_form
    global_entries = global_n**2 if form == "global" else B * global_n
    instance_entries = instance_n**2 if form == "global" else N * instance_n
    gathered_losses = 16 * global_entries + 13 * instance_entries
    teacher_tokens = (teacher.image_size // teacher.patch_size) ** 2
    teacher_targets = e * K * B * T * teacher_tokens * teacher_dim
    teacher_transient = e * (teacher.num_hidden_layers + 1) * B * T * (teacher_tokens + 1) * teacher.hidden_size
    return ActivationEstimate(
        passes, gathered_losses, global_entries, instance_entries, teacher_targets, teacher_transient, e
    )


# --------------------------------------------------------------------------------------------------------------------
# Model states
# --------------------------------------------------------------------------------------------------------------------


def count_parameters(config: InstAPConfig) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of `InstAPForPreTraining`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = InstAPForPreTraining(config)
    trainable = model.num_parameters(only_trainable=True)
    return trainable, model.num_parameters() - trainable


def model_state_bytes(trainable: int, frozen: int, zero_stage: int, num_gpus: int) -> dict[str, float]:
    weights = ADAM_BYTES_PER_TRAINABLE["weights"] * trainable
    teacher = BF16 * frozen
    states = {
        "weights": weights if zero_stage < 3 else weights / num_gpus,
        "gradients": ADAM_BYTES_PER_TRAINABLE["gradients"] * trainable / num_gpus,
        "optimizer": ADAM_BYTES_PER_TRAINABLE["optimizer"] * trainable / num_gpus,
        "teacher": teacher if zero_stage < 3 else teacher / num_gpus,
    }
    if zero_stage == 2:
        states["buffers"] = BF16 * ZERO2_ALLGATHER_BUCKET_ELEMENTS
    else:
        states["buffers"] = BF16 * min(trainable + frozen, ZERO3_MAX_LIVE_PARAMETERS)
    return states


# --------------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------------


def validation_config() -> InstAPConfig:
    """Width 256 (4 heads, MLP 1024), 4 ViT blocks, BERT 6 layers with 2 fusion, 112² with patch 16, a small teacher.

    Attention-probability dropout is off: with it, CPU SDPA falls back to the math kernel and keeps the fp32
    score matrices, which the fused GPU kernels (flash / memory-efficient, dropout included) never store.
    """
    return InstAPConfig(
        vision_config={
            "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
            "image_size": 112, "patch_size": 16, "num_frames": 8, "drop_path_rate": 0.1,
        },
        text_config={
            "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
            "intermediate_size": 1024, "max_position_embeddings": 64, "fusion_layer": 4,
            "attention_probs_dropout_prob": 0.0,
        },
        teacher_config={
            "hidden_size": 192, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 768,
            "image_size": 112, "patch_size": 16, "projection_dim": 128, "hidden_act": "quick_gelu",
        },
        projection_dim=128,
        teacher_image_size=112,
        teacher_num_layers=2,
    )


def synthetic_batch(config: InstAPConfig, step: Stage2Step, with_instances: bool, dtype) -> dict[str, torch.Tensor]:
    """Unpadded captions of `text_length` tokens and exactly `instances_per_sample` instances per video."""
    generator = torch.Generator().manual_seed(0)
    B, T, L = step.videos_per_gpu, step.frames, step.text_length
    vocab = config.text_config.vocab_size

    def clips(count: int, size: int) -> torch.Tensor:
        return torch.randn(count, T, 3, size, size, generator=generator).to(dtype)

    def captions(count: int) -> torch.Tensor:
        ids = torch.randint(4, vocab, (count, L), generator=generator)
        ids[:, 0] = config.text_config.cls_token_id
        return ids

    batch = {"pixel_values": clips(B, step.image_size), "input_ids": captions(B), "source_ids": torch.arange(B)}
    if with_instances:
        N = step.instances_per_gpu
        batch.update(
            instance_pixel_values=clips(N, config.crop_size),
            instance_input_ids=captions(N),
            instance_sample_index=torch.arange(B).repeat_interleave(step.instances_per_sample),
        )
    return batch


def measure_saved_bytes(model: InstAPForPreTraining, batch: dict, checkpointing: bool) -> int:
    """Bytes of the distinct storages autograd saves during one training forward (parameters excluded)."""
    if checkpointing:
        # Reentrant checkpointing saves each layer's inputs through save_for_backward, which the hook sees.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:
        model.activation_checkpointing_disable()
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_storages:
            saved[pointer] = max(saved.get(pointer, 0), storage.nbytes())
        return tensor

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(**batch)
    outputs.loss.backward()  # the graph must be sound, not just recorded
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def measure_contrastive_bytes(entries_side: int, same_source: str) -> int:
    """Bytes autograd saves in `contrastive_loss` over `entries_side` pairs (the matrix the gathered VTC builds)."""
    from modeling_instap.losses import contrastive_loss

    generator = torch.Generator().manual_seed(0)

    def embeddings() -> torch.Tensor:
        unit = torch.nn.functional.normalize(torch.randn(entries_side, 64, generator=generator), dim=-1)
        return unit.to(torch.bfloat16).requires_grad_()

    video, text = embeddings(), embeddings()
    temperature = torch.tensor(0.07, requires_grad=True)
    source_ids = torch.arange(entries_side) // 4  # four instances per sample
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        contrastive_loss(video, text, temperature, source_ids=source_ids, same_source=same_source)
    return sum(saved.values())


def validate(step: Stage2Step) -> list[dict]:
    config = validation_config()
    torch.manual_seed(0)
    model = InstAPForPreTraining(config).to(torch.bfloat16).train()
    rows = []
    for with_instances in (False, True):
        batch = synthetic_batch(config, step, with_instances, torch.bfloat16)
        estimate = stage2_passes(
            config, replace(step, num_gpus=1), e=BF16, mask_bytes=BF16, with_instances=with_instances
        )
        for checkpointing in (False, True):
            rows.append(
                {
                    "batch": "global + instances" if with_instances else "global only",
                    "checkpointing": checkpointing,
                    "measured": measure_saved_bytes(model, batch, checkpointing),
                    "formula": estimate.saved(checkpointing),
                }
            )
    side = 1024
    for same_source, bytes_per_entry in (("positive", 16), ("exclude", 13)):
        rows.append(
            {
                "batch": f"contrastive matrix {side}² ({'global' if same_source == 'positive' else 'instance'})",
                "checkpointing": None,
                "measured": measure_contrastive_bytes(side, same_source),
                "formula": bytes_per_entry * side**2,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def mib(value: float) -> str:
    return f"{value / 1024**2:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["instap-l", "instap-b"])
    parser.add_argument("--gpus", nargs="+", type=int, default=[8, 200])
    parser.add_argument("--videos-per-gpu", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--mask-ratio", type=float, default=0.8)
    parser.add_argument("--instances-per-sample", type=int, default=4)
    parser.add_argument("--crop-mask-ratio", type=float, default=0.8)
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--no-validate", action="store_true", help="skip the CPU measurement")
    args = parser.parse_args()
    step = Stage2Step(
        videos_per_gpu=args.videos_per_gpu, frames=args.frames, image_size=args.image_size,
        mask_ratio=args.mask_ratio, instances_per_sample=args.instances_per_sample,
        crop_mask_ratio=args.crop_mask_ratio, text_length=args.text_length,
    )
    print(
        f"Stage 2, per GPU: {step.videos_per_gpu} videos x {step.frames} frames at {step.image_size}², "
        f"ρ {step.mask_ratio}, {step.instances_per_sample} instances per video (crops ρ {step.crop_mask_ratio}), "
        f"captions of {step.text_length} tokens; bf16, AdamW. GiB per GPU.\n"
    )
    breakdowns = {}
    for preset in args.presets:
        config = InstAPConfig.from_preset(preset)
        trainable, frozen = count_parameters(config)
        print(f"**{preset}**: {trainable:,} trainable + {frozen:,} frozen (teacher) parameters.\n")
        print("| ZeRO | grad. ckpt | GPUs | weights+grads+optim | teacher | buffers | activations (saved) "
              "| of which gathered VTC | teacher targets | backward transient | **peak est.** |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for gpus in args.gpus:
            estimate = stage2_passes(config, replace(step, num_gpus=gpus))
            breakdowns.setdefault(preset, estimate)
            for zero_stage in (2, 3):
                states = model_state_bytes(trainable, frozen, zero_stage, gpus)
                trained = states["weights"] + states["gradients"] + states["optimizer"]
                resident = trained + states["teacher"] + states["buffers"]
                for checkpointing in (False, True):
                    saved = estimate.saved(checkpointing)
                    transient = estimate.backward_transient(checkpointing)
                    # The teacher runs (no grad) before the student; its transient does not meet the activations.
                    peak = resident + max(estimate.teacher_transient, saved + estimate.teacher_targets + transient)
                    print(
                        f"| {zero_stage} | {'on' if checkpointing else 'off'} | {gpus} | {gib(trained)} "
                        f"| {gib(states['teacher'])} | {gib(states['buffers'])} | {gib(saved)} "
                        f"| {gib(estimate.gathered_losses)} | {gib(estimate.teacher_targets)} | {gib(transient)} "
                        f"| **{gib(peak)}** |"
                    )
        print()

    for preset, estimate in breakdowns.items():
        print(f"Saved activations of {preset} by pass (GiB per GPU, {args.gpus[0]} GPUs):\n")
        print("| pass | sequences x tokens | layers | no ckpt | ckpt |")
        print("|---|---|---|---|---|")
        for p in estimate.passes:
            print(f"| {p.name} | {p.sequences} x {p.tokens} | {p.layers} | {gib(p.saved_bytes(BF16, False))} "
                  f"| {gib(p.saved_bytes(BF16, True))} |")
        gathered = gib(estimate.gathered_losses)
        print(f"| contrastive matrices (gathered over {args.gpus[0]} GPUs) | | | {gathered} | {gathered} |")
        print(f"\nTeacher forward transient (no grad, before the student): {gib(estimate.teacher_transient)} GiB.\n")
        many = dataclasses.replace(step, num_gpus=max(args.gpus))
        for form in ("global", "local"):
            losses = stage2_passes(InstAPConfig.from_preset(preset), many, contrastive_loss_form=form).gathered_losses
            print(f"Contrastive matrices at {max(args.gpus)} GPUs with contrastive_loss_form={form!r}: {gib(losses)} GiB "
                  "per GPU.")
        print()

    if not args.no_validate:
        validation_step = Stage2Step(videos_per_gpu=4, frames=8, image_size=112, text_length=32, num_gpus=1)
        print(
            "Activation model against a measurement (validation config: ViT/BERT width 256, 4 ViT blocks, "
            "6 BERT layers with 2 fusion, 4 videos x 8 frames at 112², 4 instances each, bf16 on CPU, one "
            "process): bytes autograd saves in the forward, each storage once, parameters excluded.\n"
        )
        print("| batch | grad. ckpt | measured (MiB) | formula (MiB) | formula error |")
        print("|---|---|---|---|---|")
        for row in validate(validation_step):
            error = (row["formula"] - row["measured"]) / row["measured"]
            checkpointing = {None: "-", True: "on", False: "off"}[row["checkpointing"]]
            print(f"| {row['batch']} | {checkpointing} | {mib(row['measured'])} "
                  f"| {mib(row['formula'])} | {error:+.1%} |")


if __name__ == "__main__":
    main()
