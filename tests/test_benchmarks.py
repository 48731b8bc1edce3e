"""The benchmarks are scripts, not tests, but what they count must hold: cheap runs of the retrieval and floor benchmarks."""

import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def bench_retrieval(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)  # the script imports its sibling `bench_model`
    import bench_retrieval

    return bench_retrieval


def test_retrieval_benchmark_scores_2nk_pairs_on_both_reranking_paths(bench_retrieval, capsys):
    # Each video once with `video_index`, or gathered per pair: the matching head scores 2 N k pairs either way.
    rows = bench_retrieval.main(["--sizes", "12", "24", "--k", "3", "--repeats", "1", "--compare-gathered",
                                 "--batch_size", "8", "--fusion_batch_size", "16", "--threads", "1"])
    assert [row["pairs"] for row in rows] == [2 * 12 * 3, 2 * 24 * 3]
    assert [row["pairs_gathered"] for row in rows] == [2 * 12 * 3, 2 * 24 * 3]
    assert all(row["rerank_s"] > 0 and row["rerank_gathered_s"] > 0 for row in rows)
    assert "videos gathered per pair" in capsys.readouterr().out


@pytest.fixture
def bench_step_floor(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import bench_step_floor

    return bench_step_floor


def test_step_floor_counts_the_instance_branch_and_applies_overrides(bench_step_floor, capsys):
    common = ["--config", "tiny", "--steps", "1", "--reference-size", "256", "--instances"]
    full = bench_step_floor.main(common)
    small_crops = bench_step_floor.main([*common, "--overrides", "crop_size=16"])
    # Crops of 16² have a quarter of the patches of 32² ones: less arithmetic, the scenes' unchanged.
    assert 0 < small_crops["flops"] < full["flops"]
    for result in (full, small_crops):
        assert result["floor_s"] == pytest.approx(result["flops"] / result["reference_flops_per_s"])
        assert result["step_s"] > result["floor_s"]
        assert 0 < result["matmul_self_s"] < result["profiled_step_s"]
    assert "crop_size=16" in capsys.readouterr().out
