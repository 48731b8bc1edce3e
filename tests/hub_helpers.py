"""Shared builders for the Hub tests (`tests/test_hub_*.py`): a tiny model and processor, an exported folder, a tiny
MP4, and a fresh Python process in which the InstAP packages cannot be imported.

Not a test module (pytest collects `test_*.py` only).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from instap_model_testing import tiny_config
from media_utils import make_tiny_tokenizer, write_video

from instap_processing import InstAPProcessor, InstAPVideoProcessor
from modeling_instap import InstAPForPreTraining, InstAPModel

PROJECT_PACKAGES = ("modeling_instap", "instap_processing", "instap_eval", "instap_train")

# Put first in a fresh process: every import of an InstAP package raises ImportError (as on a machine where it is
# not installed) and is recorded, so the script can assert at the end that nothing even tried.
BLOCK_PROJECT_IMPORTS = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    _BLOCKED = {PROJECT_PACKAGES!r}
    _TRIED = []


    class _BlockInstAP(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _BLOCKED:
                _TRIED.append(name)
                raise ImportError(f"{{name}} is not installed here")
            return None


    sys.meta_path.insert(0, _BlockInstAP())


    def assert_no_project_imports():
        assert not _TRIED, f"tried to import {{_TRIED}}"
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in _BLOCKED)
        assert not leaked, leaked
    """
)


def make_processor(tokenizer_dir: str | os.PathLike, max_length: int = 16) -> InstAPProcessor:
    """The tiny preset's processor: 32² frames, 4 frames, patch 8, a ~60-word BERT tokenizer."""
    os.makedirs(tokenizer_dir, exist_ok=True)
    tokenizer = make_tiny_tokenizer(tokenizer_dir)
    video_processor = InstAPVideoProcessor(size={"height": 32, "width": 32}, num_frames=4, patch_size=8)
    return InstAPProcessor(video_processor, tokenizer, max_length=max_length)


def make_model(pretraining: bool = True, temperature: float = 0.001, seed: int = 0, **overrides):
    """A tiny random InstAP model in eval mode with a low τ (so that softmax scores are far from uniform)."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = (InstAPForPreTraining if pretraining else InstAPModel)(config).eval()
    backbone = model.instap if pretraining else model
    with torch.no_grad():
        backbone.temperature.fill_(temperature)
        backbone.instance_temperature.fill_(0.123)
    return model


def coloured_frames(num_frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """A red square moving right over a dark green background, `(T, H, W, 3)` uint8."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 1] = 60
    for t in range(num_frames):
        x = 2 + 3 * t
        frames[t, 12:32, x : x + 16] = (230, 20, 20)
    return frames


def write_tiny_video(path: str | os.PathLike) -> str:
    write_video(coloured_frames(), path, fps=10)
    return os.fspath(path)


def fresh_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_CACHE=str(tmp_path / "empty_hub_cache"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def run_fresh(script: str, args: list[str], tmp_path, cwd: str = "/tmp", timeout: int = 240, **env: str):
    """Runs `script` (after the import blocker) in a new interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PROJECT_IMPORTS + textwrap.dedent(script), *args],
        cwd=cwd,
        env=fresh_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def isolated_remote_code(tmp_path):
    """In this process, for the duration: remote code goes to a temporary modules cache and `transformers_modules`
    is imported from there. Afterwards `sys.path`, the cache setting and the `transformers_modules` entries of
    `sys.modules` are as before (transformers appends each modules cache it meets to `sys.path`, where a stale one
    would shadow the next test's)."""
    import transformers.dynamic_module_utils as dynamic_module_utils

    def remote(name: str) -> bool:
        return name.split(".")[0] == "transformers_modules"

    saved_cache, saved_path = dynamic_module_utils.HF_MODULES_CACHE, list(sys.path)
    saved_modules = {name: module for name, module in sys.modules.items() if remote(name)}
    for name in saved_modules:
        del sys.modules[name]
    dynamic_module_utils.HF_MODULES_CACHE = str(tmp_path / "modules")
    try:
        yield
    finally:
        dynamic_module_utils.HF_MODULES_CACHE = saved_cache
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if remote(name)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        importlib.invalidate_caches()


def populate_hub_cache(folder, repo_id: str, cache_dir) -> str:
    """Places `folder` in the Hub cache `cache_dir` as `repo_id`'s snapshot at `main`, in `huggingface_hub`'s layout
    (`blobs/<sha256>`, `snapshots/<commit>/<path>` as relative links, `refs/main`), so that `from_pretrained(repo_id)`
    resolves it with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=cache_dir`. Returns the snapshot folder."""
    import hashlib
    import shutil

    folder, cache_dir = os.fspath(folder), os.fspath(cache_dir)
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
        for root, _, names in os.walk(folder)
        for name in names
    )
    hashes = {}
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            hashes[name] = hashlib.sha256(handle.read()).hexdigest()
    commit = hashlib.sha1("".join(f"{n}\0{h}\n" for n, h in hashes.items()).encode()).hexdigest()
    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    os.makedirs(os.path.join(repo_dir, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for name, digest in hashes.items():
        blob = os.path.join(repo_dir, "blobs", digest)
        if not os.path.exists(blob):
            shutil.copyfile(os.path.join(folder, name), blob)
        target = os.path.join(snapshot, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(target)), target)
    with open(os.path.join(repo_dir, "refs", "main"), "w", encoding="utf-8") as handle:
        handle.write(commit)
    return snapshot
