#!/usr/bin/env python
"""Stage 1 of InstAP: masked video modelling with a frozen CLIP teacher (METHOD §3) with `InstAPPretrainTrainer`.

    python train_scripts/run_pretrain.py                    # tiny student + random tiny teacher on the synthetic InstVL
    accelerate launch train_scripts/run_pretrain.py --dataset_name_or_path org/videos --preset instap-l \\
        --teacher_model_name_or_path openai/clip-vit-large-patch14 --num_frames 8 --output_dir out/stage1 --bf16 ...

The student sees only the tokens the teacher's attention keeps (ρ = 0.8 for videos, 0.5 for images) and regresses
the teacher's last K layers there. The saved folder initialises stage 2: `run_align.py --stage1_checkpoint <dir>`.
"""

import os

from instap_processing.collator import InstAPDataCollator
from instap_train import InstAPPretrainTrainer
from instap_train.factory import (
    build_config,
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
from modeling_instap import InstAPForMaskedVideoModeling

DEMO_ARGUMENTS = {
    "output_dir": os.path.join("outputs", "instap-tiny-pretrain"),
    "max_steps": 100,
    "per_device_train_batch_size": 16,
    "learning_rate": 1.5e-4 * 16 / 256,  # METHOD §3: 1.5e-4 per 256 samples, scaled linearly
    "weight_decay": 0.05,
    "adam_beta2": 0.95,
    "warmup_steps": 10,
    "lr_scheduler_type": "cosine",
    "logging_steps": 20,
    "save_strategy": "no",
    "report_to": "tensorboard",
    "dataloader_num_workers": 2,
    "torch_num_threads": 1,
    "seed": 0,
    "num_frames": 8,
    # The stage-2 demo's resolution, so that this checkpoint initialises it (`run_align.py --stage1_checkpoint`).
    "config_overrides": "vision_config.image_size=64,teacher_config.image_size=64,teacher_image_size=64",
}


@restores_torch_threads
def main(argv: list[str] | None = None):
    model_args, data_args, training_args = parse_script_arguments(argv, DEMO_ARGUMENTS, description=__doc__)
    dataset = resolve_dataset(data_args)
    if model_args.model_name_or_path:
        model = InstAPForMaskedVideoModeling.from_pretrained(model_args.model_name_or_path)
    else:
        model = InstAPForMaskedVideoModeling(build_config(model_args))
        if model_args.teacher_model_name_or_path:
            from modeling_instap.pretrained_init import load_teacher_from_clip

            load_teacher_from_clip(model, model_args.teacher_model_name_or_path)
    compile_teacher_if_asked(model, model_args)
    num_frames = data_args.num_frames or 8
    # Stage 1 reads no text, but the saved processor is reused by stage 2, so it carries a tokenizer.
    tokenizer = build_tokenizer(model_args, dataset, data_args, training_args.output_dir)
    processor = build_processor(model.config, tokenizer, num_frames, data_args.max_text_length)
    train_dataset = build_train_dataset(
        dataset, data_args, num_frames, training_args.per_device_train_batch_size, training_args.data_seed or 0,
        None, stage=1,
    )
    trainer = InstAPPretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=InstAPDataCollator(processor, text=False, instances=False, training=True),
        **trainer_bad_sample_caps(data_args),
    )
    result = trainer.train(
        resume_from_checkpoint=resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    trainer.save_model()
    skipped, seen = trainer.global_sample_counts()  # a collective: every rank
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        print(f"stage 1: {result.global_step} steps, final reconstruction loss {result.training_loss:.4f}; bad samples "
              f"skipped: {skipped} of {seen} read")
    return result


if __name__ == "__main__":
    main()
