#!/usr/bin/env python
"""Stage 2 of InstAP: instance-aware alignment (METHOD §4) with `InstAPAlignTrainer`.

    python train_scripts/run_align.py                       # the demo: tiny InstAP on the synthetic InstVL (CPU)
    accelerate launch train_scripts/run_align.py --dataset_name_or_path org/instvl --preset instap-l \\
        --stage1_checkpoint out/stage1 --text_model_name_or_path bert-large-uncased \\
        --output_dir out/stage2 --bf16 --gradient_checkpointing ...
    torchrun --nproc_per_node 8 train_scripts/run_align.py ... --deepspeed train_scripts/configs/ds_zero2.json

With no arguments it generates the synthetic InstVL into a cache folder (first use only), trains a tiny model for a
few minutes on the CPU and prints the evaluation table: global retrieval (dual encoder and matching-head re-ranked)
and instance retrieval on the test splits.
"""

import json
import os
import textwrap

from transformers.utils import logging

from instap_eval.benchmarks import evaluate_instvl_split, format_results_table
from instap_eval.zero_shot import describe_rerank
from instap_processing.collator import InstAPDataCollator
from instap_train import InstAPAlignTrainer
from instap_train.factory import (
    DataArguments,
    ModelArguments,
    apply_overrides,
    build_config,
    build_eval_dataset,
    build_processor,
    build_tokenizer,
    build_train_dataset,
    compile_teacher_if_asked,
    parse_script_arguments,
    resolve_dataset,
    resolve_resume_checkpoint,
    restores_torch_threads,
    trainer_bad_sample_caps,
)
from instap_train.reporting import plot_training_curves
from modeling_instap import InstAPForMaskedVideoModeling, InstAPForPreTraining

logger = logging.get_logger(__name__)

# The defaults on the synthetic InstVL (the demo: `python train_scripts/run_align.py`, about 7 minutes on 2 CPU
# cores); each applies unless its flag is given, and the config overrides merge with given ones.
DEMO_ARGUMENTS = {
    "output_dir": os.path.join("outputs", "instap-tiny-align"),
    "max_steps": 600,
    "per_device_train_batch_size": 16,
    "learning_rate": 1e-3,
    "weight_decay": 0.02,
    "adam_beta2": 0.98,
    "warmup_steps": 30,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.01},
    "logging_steps": 50,
    "save_strategy": "no",
    "report_to": "tensorboard",
    "dataloader_num_workers": 2,
    # 2 idle cores: 2 workers + 1 thread ran 1.73 steps/s, 0 workers + 2 threads 1.75 (benchmarks/bench_threads.py);
    # one thread keeps its speed when other load takes a core (2 threads then ran up to 20x slower).
    "torch_num_threads": 1,
    "seed": 0,
    "data_seed": 0,
    "rerank_k": 16,
    # Method §4.4's 32 tokens cut 13 % of the synthetic scene sentences (they list every object with its place or
    # motion; up to 44 tokens), and a cut sentence loses what tells its scene apart: every one fits in 48 (README).
    "max_text_length": 48,
    # A matching head trained 600 steps from scratch is less sure than the dual encoder: fuse both (README).
    "rerank_score": "fused",
    # Why the demo departs from docs/method.md's values (measurements in the README):
    # - the teacher is random, so its masks carry no information: ρ 0.5/0.25 (0.8/0.5) keeps small objects in view;
    # - 64² frames give each object a few patches;
    # - λ_inst 0.5 (0.1): from scratch in 600 steps the instance branch needs a larger share;
    # - no dropout or drop-path: a 64-wide model trained for 600 steps underfits, and they only slow it;
    # - λ_vtm 3, λ_inst_vtm 3 and the scene-aware instance VTM context: the matching heads learn within 600 steps;
    # - identical captions are no negatives: half of the synthetic instance sentences recur across samples.
    "config_overrides": "video_mask_ratio=0.5,image_mask_ratio=0.25,vision_config.image_size=64,"
    "teacher_config.image_size=64,teacher_image_size=64,lambda_inst=0.5,"
    "text_config.hidden_dropout_prob=0,text_config.attention_probs_dropout_prob=0,vision_config.drop_path_rate=0,"
    "lambda_vtm=3,lambda_inst_vtm=3,instance_vtm_context=attention_pool,exclude_identical_texts=True",
}


DESCRIPTION = textwrap.dedent(
    """\
    Stage 2 of InstAP (instance-aware alignment). Without --dataset_name_or_path it trains the tiny preset on the
    synthetic InstVL (generated on first use) with the demo defaults below, each overridable by its flag (the
    demo's --config_overrides merge with yours), then prints global and instance retrieval on the test splits.
    The script's own arguments (model, data) come first; the Trainer's follow.

    demo defaults: """
) + ", ".join(f"--{key} {value}" for key, value in DEMO_ARGUMENTS.items())


def load_model(model_args: ModelArguments, config) -> InstAPForPreTraining:
    """Stage-2 model from a checkpoint, or from a config initialised from stage 1 / BERT / CLIP as asked."""
    if model_args.model_name_or_path:
        loaded = InstAPForPreTraining.config_class.from_pretrained(model_args.model_name_or_path)
        return InstAPForPreTraining.from_pretrained(
            model_args.model_name_or_path, config=apply_overrides(loaded, model_args.config_overrides)
        )
    model = InstAPForPreTraining(config)
    if model_args.stage1_checkpoint:
        stage1 = InstAPForMaskedVideoModeling.from_pretrained(model_args.stage1_checkpoint)
        model.instap.vision_model.load_state_dict(stage1.vision_model.state_dict())
        if model.distillation is not None:
            model.distillation.load_state_dict(stage1.distillation.state_dict())
    if model_args.text_model_name_or_path:
        from modeling_instap.pretrained_init import load_text_from_bert

        load_text_from_bert(model, model_args.text_model_name_or_path)
    if model_args.teacher_model_name_or_path:
        from modeling_instap.pretrained_init import load_teacher_from_clip

        load_teacher_from_clip(model, model_args.teacher_model_name_or_path)
    return model


def evaluate_splits(
    model, processor, dataset: str, data_args: DataArguments, num_frames: int, batch_size: int,
    instance_attention_pool: bool = True,
) -> dict:
    """Global and instance retrieval on each evaluation split, dual encoder and re-ranked, through the one InstVL
    evaluation path (`instap_eval.benchmarks.evaluate_instvl_split`, which streams the split with a bounded cache).

    `instance_attention_pool=False` scores instance crops alone, as global-only models are evaluated (method §5).
    Returns ``{split: evaluation}`` in the results schema of `instap_eval.benchmarks.results_rows` (each part with
    its dual-encoder and re-ranked metrics and the mean recall of a random ranking).
    """
    return {
        split: evaluate_instvl_split(
            model, processor, dataset, split, media_root=data_args.media_root, num_frames=num_frames,
            k=data_args.rerank_k, batch_size=batch_size, use_attention_pool=instance_attention_pool,
            rerank_score=data_args.rerank_score, max_samples=data_args.max_eval_samples,
        )
        for split in filter(None, (name.strip() for name in data_args.eval_splits.split(",")))
    }


@restores_torch_threads
def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_script_arguments(argv, DEMO_ARGUMENTS, description=DESCRIPTION)
    # Trainer would create the Hub repository at start (network); the export below pushes (or dry-runs) at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False

    dataset = resolve_dataset(data_args)
    tokenizer = build_tokenizer(model_args, dataset, data_args, training_args.output_dir)
    config = build_config(model_args, tokenizer)
    model = load_model(model_args, config)
    config = model.config
    compile_teacher_if_asked(model, model_args)
    if model_args.lora:
        from instap_train.peft_utils import apply_lora

        model = apply_lora(model, r=model_args.lora_r, alpha=model_args.lora_alpha)
    num_frames = data_args.num_frames or config.vision_config.num_frames
    processor = build_processor(
        config, tokenizer, num_frames, data_args.max_text_length, data_args.random_resized_crop_scale,
        full_caption=data_args.full_caption, box_trajectories=data_args.box_trajectories,
    )
    train_dataset = build_train_dataset(
        dataset, data_args, num_frames, training_args.per_device_train_batch_size, training_args.data_seed or 0,
        config.max_instances_per_sample, stage=2,
    )
    # Retrieval on a held-out split during training (`--eval_strategy steps --eval_steps N`): the first eval split.
    eval_splits = [name.strip() for name in data_args.eval_splits.split(",") if name.strip()]
    eval_dataset = None
    if training_args.eval_strategy != "no" and eval_splits:
        eval_dataset = build_eval_dataset(dataset, eval_splits[0], data_args, num_frames)
    trainer = InstAPAlignTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        # Crops stay uint8 until the trainer normalises them on the device (4x less worker-to-device memory).
        data_collator=InstAPDataCollator(processor, text=True, instances=True, training=True, uint8_instance_crops=True),
        eval_data_collator=InstAPDataCollator(processor, text=True, instances=False, training=False),
        processing_class=processor,
        **trainer_bad_sample_caps(data_args),
    )
    train_result = trainer.train(
        resume_from_checkpoint=resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)

    skipped, seen = trainer.global_sample_counts()  # a collective: every rank
    results = {}
    if trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        # A model trained without the instance branch (λ_inst = 0) has an untrained pool: score its crops alone.
        results = evaluate_splits(
            unwrapped, processor, dataset, data_args, num_frames, training_args.per_device_eval_batch_size,
            instance_attention_pool=unwrapped.config.lambda_inst > 0,
        )
        output_dir = training_args.output_dir
        summary = [f"\nInstAP after {train_result.global_step} steps (final training loss {train_result.training_loss:.4f})"]
        if results:
            table = format_results_table(results)
            summary += [table, describe_rerank(data_args.rerank_score, data_args.rerank_k)]
            with open(os.path.join(output_dir, "retrieval.md"), "w", encoding="utf-8") as handle:
                handle.write(table + "\n")
        eval_json = os.path.join(output_dir, "eval_results.json")
        with open(eval_json, "w", encoding="utf-8") as handle:
            json.dump({"global_step": train_result.global_step, "rerank_k": data_args.rerank_k,
                       "rerank_score": data_args.rerank_score, "results": results}, handle, indent=2)
        curves = plot_training_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png"))
        summary.append(f"Model, processor, results (eval_results.json, retrieval.md){', curves (training_curves.png)' if curves else ''} "
                       f"written to {output_dir}.")
        summary.append(f"Bad samples skipped in training (all workers and processes): {skipped} of {seen} read.")
        if trainer.dropped_instances:
            summary.append(f"Instances left out in training (under {processor.min_visible_box_fraction:.0%} of the box in "
                           f"view after augmentation): {trainer.dropped_instances}.")
        print("\n".join(summary))
        # The folder's own card, with the results just measured in its model-index.
        from instap_train.model_card import generate_model_card

        generate_model_card(
            training_args.output_dir, repo_id=training_args.hub_model_id, dataset_id=data_args.dataset_name_or_path
        ).save(os.path.join(training_args.output_dir, "README.md"))
        if training_args.hub_model_id:
            from instap_train.hub import export_for_hub, push_folder

            hub_dir = os.path.join(training_args.output_dir, "hub")
            export_for_hub(
                unwrapped.merge_and_unload() if model_args.lora else unwrapped, processor, hub_dir, eval_json,
                repo_id=training_args.hub_model_id, dataset_id=data_args.dataset_name_or_path,
            )
            # Without --push_to_hub this is a dry run: it lists what would be uploaded.
            print(push_folder(
                hub_dir, training_args.hub_model_id, dry_run=not push_to_hub,
                private=training_args.hub_private_repo, token=training_args.hub_token,
            ))
    return results


if __name__ == "__main__":
    main()
