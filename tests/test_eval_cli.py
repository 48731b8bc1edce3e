"""`python -m instap_eval` end to end: a tiny InstAP saved with its processor, tiny real media, a benchmark JSON
file and a synthetic InstVL split."""

import json
import os
import subprocess
import sys

import pytest
from eval_helpers import make_benchmark, make_synthetic_instvl, make_tiny_checkpoint

from instap_eval.cli import main

ROWS = ("dual encoder", "re-ranked")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval_cli"))
    synthetic = make_synthetic_instvl(root)
    checkpoint = make_tiny_checkpoint(root, synthetic)
    benchmark, media_root, _ = make_benchmark(root)
    return checkpoint, synthetic, benchmark, media_root


def _check_metrics(metrics):
    for key in ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "t2v_r_mean", "v2t_r_mean", "r_mean"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["t2v_r1"] <= metrics["t2v_r5"] <= metrics["t2v_r10"]
    assert metrics["r_mean"] == pytest.approx((metrics["t2v_r_mean"] + metrics["v2t_r_mean"]) / 2)


def test_benchmark_file(files, tmp_path, capsys):
    checkpoint, _, benchmark, media_root = files
    output = tmp_path / "results" / "msrvtt.json"
    returned = main([
        "--model", checkpoint, "--data", benchmark, "--media_root", media_root, "--name", "tiny-msrvtt",
        "--k", "3", "--batch_size", "2", "--output", str(output),
    ])
    printed = capsys.readouterr().out
    header = "| evaluation | T2V R@1 | T2V R@5 | T2V R@10 | T2V mean | V2T R@1 | V2T R@5 | V2T R@10 | V2T mean | mean R |"
    assert header in printed
    for row in ROWS:
        assert f"| tiny-msrvtt global, {row} |" in printed
    saved = json.loads(output.read_text())
    assert saved["format"] == "benchmark" and saved["results"] == returned["results"]
    result = saved["results"]["tiny-msrvtt"]
    assert (result["num_videos"], result["num_texts"], result["k"], result["max_text_length"]) == (6, 8, 3, 32)
    _check_metrics(result["global"]["dual_encoder"])
    _check_metrics(result["global"]["reranked"])

    # Paragraph mode: one text per video and 64 tokens.
    paragraph = main(["--model", checkpoint, "--data", benchmark, "--paragraph", "--media_root", media_root, "--k", "2"])
    result = next(iter(paragraph["results"].values()))
    assert (result["num_texts"], result["max_text_length"]) == (6, 64)


def test_instvl_splits(files, capsys):
    checkpoint, synthetic, _, _ = files
    returned = main([
        "--model", checkpoint, "--data", synthetic, "--split", "video_1k,img_1k", "--k", "4", "--max_samples", "6",
    ])
    printed = capsys.readouterr().out
    for split in ("video_1k", "img_1k"):
        for part in ("global", "instance"):
            for row in ROWS:
                assert f"| {split} {part}, {row} |" in printed
        result = returned["results"][split]
        assert result["num_videos"] == 6 and result["num_instances"] >= 6 and result["attention_pool"] is True
        for part in ("global", "instance"):
            _check_metrics(result[part]["dual_encoder"])
            _check_metrics(result[part]["reranked"])

    alone = main(["--model", checkpoint, "--data", synthetic, "--split", "img_1k", "--max_samples", "6",
                  "--no_attention_pool", "--no_rerank"])
    assert alone["results"]["img_1k"]["attention_pool"] is False
    assert "reranked" not in alone["results"]["img_1k"]["instance"]
    with pytest.raises(SystemExit):
        main(["--model", checkpoint, "--data", synthetic])  # InstVL data needs --split


def test_python_dash_m(files, tmp_path):
    """`python -m instap_eval` runs the same CLI in a fresh process (dual encoder only with --no_rerank)."""
    checkpoint, _, benchmark, media_root = files
    output = tmp_path / "out.json"
    completed = subprocess.run(
        [sys.executable, "-m", "instap_eval", "--model", checkpoint, "--data", benchmark, "--media_root", media_root,
         "--no_rerank", "--output", str(output)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| benchmark global, dual encoder |" in completed.stdout
    assert "re-ranked" not in completed.stdout
    assert "reranked" not in json.loads(output.read_text())["results"]["benchmark"]["global"]
