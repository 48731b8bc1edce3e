"""A short version of `benchmarks/ablation_synthetic.py`: after 200 CPU steps, InstAP retrieves instances better
than chance on held-out synthetic splits (crops through the attention pool against all instance captions)."""

import pytest

SPLITS = ("video_1k", "img_zero_1k")


def chance_mean_recall(num_items: int) -> float:
    return 100.0 * sum(min(k, num_items) for k in (1, 5, 10)) / 3 / num_items


@pytest.mark.slow
def test_instap_beats_chance_on_instance_retrieval(tmp_path):
    from instap_processing.instvl import load_instvl
    from instap_train.demo_data import ensure_synthetic_instvl
    from instap_train.run_align import DEMO_ARGUMENTS
    from instap_train.run_align import main as run_align

    data = ensure_synthetic_instvl(str(tmp_path / "instvl"), num_train=128, num_test=32, seed=0)
    results = run_align([
        "--output_dir", str(tmp_path / "out"), "--synthetic_dir", data, "--synthetic_num_train", "128",
        "--synthetic_num_test", "32", "--max_steps", "200", "--per_device_train_batch_size", "16",
        "--learning_rate", "1e-3", "--warmup_steps", "10", "--lr_scheduler_type", "cosine_with_min_lr",
        "--lr_scheduler_kwargs", '{"min_lr_rate": 0.01}', "--logging_steps", "100", "--save_strategy", "no",
        "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0", "--use_cpu",
        "--eval_splits", ",".join(SPLITS), "--rerank_k", "4", "--config_overrides", DEMO_ARGUMENTS["config_overrides"],
    ])
    ratios = []
    for split in SPLITS:
        num_instances = sum(len(record["instances"]) for record in load_instvl(data, split, streaming=False))
        ratios.append(results[f"{split} instance, dual encoder"]["r_mean"] / chance_mean_recall(num_instances))
    # Measured 1.45x and 2.3x chance (seed 0; seed 1: 2.4x and 3.0x); the bar is 1.25x on average over the splits.
    assert sum(ratios) / len(ratios) > 1.25, ratios
