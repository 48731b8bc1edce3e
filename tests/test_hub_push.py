"""`instap_train.hub.push_folder`: the dry run lists exactly what `upload_folder` would upload and contacts nothing;
the real push goes through `HfApi.create_repo` + `upload_folder` with the same filters; unfit folders are refused."""

from __future__ import annotations

import pytest
from hub_helpers import make_model, make_processor

import instap_train.hub as hub
from instap_train.hub import DEFAULT_PUSH_IGNORE_PATTERNS, export_for_hub, push_folder


@pytest.fixture(scope="module")
def training_output(tmp_path_factory):
    """An exported folder plus what a Trainer run leaves next to it."""
    root = tmp_path_factory.mktemp("push")
    folder = root / "out"
    files = export_for_hub(make_model(pretraining=False), make_processor(root / "tokenizer"), folder,
                           repo_id="me/instap-tiny")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    (folder / "checkpoint-5" / "config.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"x")
    (folder / "runs" / "May01").mkdir(parents=True)
    (folder / "runs" / "May01" / "events.out.tfevents.1").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_instap.cpython-311.pyc").write_bytes(b"x")
    return folder, files


class _NoNetwork:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a dry run must not create an HfApi client")


def test_dry_run_lists_the_repository_files_only(training_output, monkeypatch):
    folder, exported_files = training_output
    monkeypatch.setattr("huggingface_hub.HfApi", _NoNetwork)
    files = push_folder(folder, "me/instap-tiny", dry_run=True)
    assert files == exported_files  # no checkpoints, optimizer states, pickles, logs, .git or caches
    assert "README.md" in files and "model.safetensors" in files and "pipeline_instap.py" in files
    only_code = push_folder(folder, "me/instap-tiny", allow_patterns=["*.py"])
    assert only_code == [f for f in exported_files if f.endswith(".py")]


def test_push_uses_create_repo_and_upload_folder(training_output, monkeypatch):
    folder, exported_files = training_output
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://huggingface.co/me/instap-tiny/commit/0"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    files = push_folder(folder, "me/instap-tiny", dry_run=False, private=True, token="hf_x", commit_message="v1")
    assert files == exported_files
    assert calls[0] == ("init", "hf_x")
    assert calls[1] == ("create_repo", "me/instap-tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["repo_id"] == "me/instap-tiny" and upload["folder_path"] == str(folder)
    assert upload["commit_message"] == "v1" and upload["repo_type"] == "model"
    assert upload["ignore_patterns"] == DEFAULT_PUSH_IGNORE_PATTERNS and upload["allow_patterns"] is None


def test_unfit_folders_are_refused(tmp_path, training_output, monkeypatch):
    monkeypatch.setattr("huggingface_hub.HfApi", _NoNetwork)
    # A folder saved with save_pretrained only: complete remote code, but no card.
    plain = tmp_path / "plain"
    make_model(pretraining=False).save_pretrained(plain)
    make_processor(tmp_path / "tokenizer").save_pretrained(plain)
    with pytest.raises(ValueError, match="README.md"):
        push_folder(plain, "me/x")
    assert "config.json" in push_folder(plain, "me/x", check=False)
    # A pickle that the ignore patterns would not catch.
    folder, _ = training_output
    with pytest.raises(ValueError, match="pickled"):
        push_folder(folder, "me/x", ignore_patterns=["checkpoint-*", "runs/"])
    with pytest.raises(FileNotFoundError):
        push_folder(tmp_path / "missing", "me/x")
    assert hub.PIPELINE_TASK == "zero-shot-video-classification"
