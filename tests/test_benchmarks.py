"""The benchmarks are scripts, not tests, but what they count must hold: a cheap run of the retrieval benchmark."""

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
