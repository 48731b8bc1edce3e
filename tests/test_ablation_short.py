"""A short version of `benchmarks/ablation_synthetic.py`: one 200-step CPU training of the tiny InstAP on the
synthetic InstVL, then (1) instance retrieval beats chance on held-out splits and (2) the activation maps of an
object's phrase put more mass inside that object's box than outside, where the untrained model does not."""

import statistics

import pytest

SPLITS = ("video_1k", "img_zero_1k")


def chance_mean_recall(num_items: int) -> float:
    return 100.0 * sum(min(k, num_items) for k in (1, 5, 10)) / 3 / num_items


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from instap_train.demo_data import ensure_synthetic_instvl
    from instap_train.run_align import DEMO_ARGUMENTS
    from instap_train.run_align import main as run_align

    root = tmp_path_factory.mktemp("ablation")
    data = ensure_synthetic_instvl(str(root / "instvl"), num_train=128, num_test=32, seed=0)
    output_dir = root / "out"
    results = run_align([
        "--output_dir", str(output_dir), "--synthetic_dir", data, "--synthetic_num_train", "128",
        "--synthetic_num_test", "32", "--max_steps", "200", "--per_device_train_batch_size", "16",
        "--learning_rate", "1e-3", "--warmup_steps", "10", "--lr_scheduler_type", "cosine_with_min_lr",
        "--lr_scheduler_kwargs", '{"min_lr_rate": 0.01}', "--logging_steps", "100", "--save_strategy", "no",
        "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0", "--use_cpu",
        "--eval_splits", ",".join(SPLITS), "--rerank_k", "4", "--config_overrides", DEMO_ARGUMENTS["config_overrides"],
    ])
    return data, output_dir, results


@pytest.mark.slow
def test_instap_beats_chance_on_instance_retrieval(trained):
    from instap_processing.instvl import load_instvl

    data, _, results = trained
    ratios = []
    for split in SPLITS:
        num_instances = sum(len(record["instances"]) for record in load_instvl(data, split, streaming=False))
        ratios.append(results[f"{split} instance, dual encoder"]["r_mean"] / chance_mean_recall(num_instances))
    # Measured 1.45x and 2.3x chance (seed 0; seed 1: 2.4x and 3.0x); the bar is 1.25x on average over the splits.
    assert sum(ratios) / len(ratios) > 1.25, ratios


@pytest.mark.slow
def test_activation_maps_point_at_the_named_object_after_training(trained):
    """Median `box_mass_ratio` of "a {colour} {shape}" maps on multi-object test scenes (measured: 2.8 trained, 0.96
    untrained). Not phrase-specific yet: the map is not denser on the named object than on the scene's other
    objects more often than chance (benchmarks/bench_activation_maps.py reports that measure)."""
    import re

    from instap_eval.visualize import activation_map, box_mass_ratio
    from instap_processing import InstAPProcessor
    from instap_processing.instvl import load_instvl
    from modeling_instap import InstAPForPreTraining

    data, output_dir, _ = trained
    model = InstAPForPreTraining.from_pretrained(output_dir).eval()
    untrained = InstAPForPreTraining(model.config).eval()
    processor = InstAPProcessor.from_pretrained(output_dir)
    scenes = [r for r in load_instvl(data, "img_1k", streaming=False) if len(r["instances"] or []) >= 2][:12]
    medians = {}
    for name, candidate in (("trained", model), ("untrained", untrained)):
        ratios = []
        for record in scenes:
            for instance in record["instances"]:
                colour, shape = re.match(r"a (?:small|large) (\w+) (\w+)", instance["caption"]).groups()
                maps = activation_map(candidate, processor, record["media"], f"a {colour} {shape}")
                assert maps.isfinite().all() and float(maps.max()) == pytest.approx(1.0) and float(maps.min()) >= 0
                ratios.append(box_mass_ratio(maps, instance["boxes"][0]))
        medians[name] = statistics.median(ratios)
    assert medians["trained"] > 1.5 and medians["trained"] > medians["untrained"], medians
