"""The run scripts as a new user meets them: --help, defaults that survive one flag, arguments checked before any
work, no process-wide setting changed behind the caller, and what a short run leaves in its output folder."""

import os
import subprocess
import sys
import time

import pytest
import torch
from instap_model_testing import tiny_config

from instap_train.factory import DataArguments, compile_teacher_if_asked, parse_script_arguments
from instap_train.run_align import DEMO_ARGUMENTS
from modeling_instap import InstAPForPreTraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_starts_with_the_description_and_the_scripts_own_arguments():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_scripts", "run_align.py"), "--help"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.splitlines()[0].startswith("usage:") and len(text.splitlines()[0]) < 100
    assert "Stage 2 of InstAP" in text.split("options:")[0] and "demo defaults:" in text
    # The script's own arguments come before the Trainer's.
    options = text.split("options:")[1]
    assert options.index("--config_overrides") < options.index("--dataset_name_or_path") < options.index("--per_device_train_batch_size")


def test_synthetic_defaults_survive_a_flag_and_overrides_merge(tmp_path):
    threads = torch.get_num_threads()
    model_args, data_args, training_args = parse_script_arguments(
        ["--max_steps", "20", "--config_overrides", "lambda_inst=0.3", "--output_dir", str(tmp_path)], DEMO_ARGUMENTS
    )
    assert training_args.max_steps == 20 and training_args.output_dir == str(tmp_path)
    assert training_args.learning_rate == DEMO_ARGUMENTS["learning_rate"]
    assert training_args.dataloader_num_workers == DEMO_ARGUMENTS["dataloader_num_workers"]
    assert data_args.rerank_k == DEMO_ARGUMENTS["rerank_k"] and data_args.torch_num_threads == 1
    assert model_args.config_overrides == DEMO_ARGUMENTS["config_overrides"] + ",lambda_inst=0.3"
    torch.set_num_threads(threads)  # the demo default asked for 1 thread; restore the suite's setting

    # On a user's own data set the demo defaults do not apply, and no thread count is set behind the caller.
    data = tmp_path / "data.jsonl"
    data.write_text("")
    torch.set_num_threads(1)
    _, data_args, training_args = parse_script_arguments(
        ["--dataset_name_or_path", str(data), "--dataloader_num_workers", "0", "--output_dir", str(tmp_path)],
        DEMO_ARGUMENTS,
    )
    assert training_args.learning_rate != DEMO_ARGUMENTS["learning_rate"] and data_args.rerank_k == 128
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


def test_bad_arguments_fail_at_once_before_any_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output_dir = tmp_path / "out"
    start = time.perf_counter()
    for path in ("data/instvl", "./missing", str(tmp_path / "nope.jsonl")):
        with pytest.raises(FileNotFoundError, match="dataset_name_or_path"):
            parse_script_arguments(["--dataset_name_or_path", path, "--output_dir", str(output_dir)], DEMO_ARGUMENTS)
    assert time.perf_counter() - start < 10  # no Hub retries (they took 80 s)
    with pytest.raises(ValueError, match="instap-xl"):
        parse_script_arguments(["--preset", "instap-xl", "--output_dir", str(output_dir)], DEMO_ARGUMENTS)
    with pytest.raises(ValueError, match="lamda_inst.*did you mean 'lambda_inst'"):
        parse_script_arguments(["--config_overrides", "lamda_inst=0.1", "--output_dir", str(output_dir)], DEMO_ARGUMENTS)
    with pytest.raises(ValueError, match="vision_config.drop_path.*drop_path_rate"):
        parse_script_arguments(
            ["--config_overrides", "vision_config.drop_path=0.5", "--output_dir", str(output_dir)], DEMO_ARGUMENTS
        )
    with pytest.raises(SystemExit):  # argparse names the choices
        parse_script_arguments(["--decode_thread_type", "frame", "--output_dir", str(output_dir)], DEMO_ARGUMENTS)
    assert not output_dir.exists()


def test_compile_teacher_flag_reaches_the_teacher_and_needs_one(tmp_path):
    model_args, _, _ = parse_script_arguments(
        ["--compile_teacher", "--output_dir", str(tmp_path / "out")], DEMO_ARGUMENTS
    )
    with_teacher = InstAPForPreTraining(tiny_config())
    compile_teacher_if_asked(with_teacher, model_args)
    assert with_teacher.distillation._compiled_teacher is not None  # compiled lazily, at the first batch
    config = tiny_config()
    config.teacher_config = None
    with pytest.raises(ValueError, match="compile_teacher.*no teacher"):
        compile_teacher_if_asked(InstAPForPreTraining(config), model_args)


def test_data_arguments_check_what_a_json_file_gives_them():
    # A JSON argument file bypasses argparse's choices: the dataclass checks them itself.
    with pytest.raises(ValueError, match="decode_thread_type.*'FRAME', 'SLICE', 'AUTO'"):
        DataArguments(decode_thread_type="PARALLEL")
    with pytest.raises(ValueError, match="decode_threads"):
        DataArguments(decode_threads=-1)
    with pytest.raises(ValueError, match="decode_threads"):
        DataArguments(decode_threads="2")
    assert DataArguments(decode_threads=0).decode_threads == 0  # one per core, as decode_video takes it


@pytest.mark.slow
def test_two_step_demo_keeps_its_defaults_and_leaves_logs_curves_and_table(tmp_path):
    from instap_train.demo_data import ensure_synthetic_instvl
    from instap_train.run_align import main as run_align

    data = ensure_synthetic_instvl(str(tmp_path / "instvl"), num_train=16, num_test=8)
    output_dir = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        results = run_align([
            "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4",
            "--output_dir", str(output_dir), "--synthetic_dir", data,
            "--synthetic_num_train", "16", "--synthetic_num_test", "8", "--eval_splits", "img_1k",
            "--dataloader_num_workers", "0",
        ])
    finally:
        torch.set_num_threads(threads)
    from modeling_instap import InstAPConfig

    config = InstAPConfig.from_pretrained(output_dir)
    assert config.vision_config.image_size == 64 and config.video_mask_ratio == 0.5  # the demo's overrides
    import json

    assert json.loads((output_dir / "eval_results.json").read_text())["rerank_k"] == DEMO_ARGUMENTS["rerank_k"]
    events = [name for _, _, files in os.walk(output_dir / "runs") for name in files if name.startswith("events.out")]
    assert events, "no TensorBoard event file"
    assert (output_dir / "training_curves.png").stat().st_size > 1000
    table = (output_dir / "retrieval.md").read_text()
    assert "img_1k global, dual encoder" in table and "chance mean R" in table
    assert set(results["img_1k"]["global"]) >= {"dual_encoder", "reranked", "chance_r_mean"}
    assert "t2v_medr" not in results["img_1k"]["global"]["reranked"]  # ranks outside the top k mean nothing
