"""`instap_train.hub.export_for_hub`: the exported folder is a Hub model repository that loads with the Auto classes
and `trust_remote_code=True` in a fresh process where no InstAP package can be imported, from the folder and from a
pre-populated Hub cache (`org/instap-tiny`, offline)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from hub_helpers import make_model, make_processor, populate_hub_cache, run_fresh
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_import_files

from instap_train.hub import check_hub_folder, export_for_hub

MODEL_CODE = {"configuration_instap.py", "modeling_instap.py", "losses.py", "masking.py"}
PROCESSOR_CODE = {
    "processing_instap.py", "video_processing_instap.py", "captions.py", "crops.py", "errors.py", "records.py",
    "decoding.py", "geometry.py", "sampling.py",
}
EVAL_JSON = {
    "global_step": 7,
    "results": {
        "img_1k": {
            "global": {
                "dual_encoder": {"t2v_r1": 12.5, "t2v_r5": 50.0, "t2v_r10": 75.0, "v2t_r1": 25.0, "v2t_r5": 62.5,
                                 "v2t_r10": 87.5, "r_mean": 52.08},
                "reranked": {"t2v_r1": 37.5, "t2v_r5": 62.5, "t2v_r10": float("nan")},
            },
        },
    },
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    processor = make_processor(root / "tokenizer")
    model = make_model(pretraining=True)
    folder = root / "instap-tiny"
    files = export_for_hub(model, processor, folder, EVAL_JSON, repo_id="org/instap-tiny", dataset_id="org/instvl")
    return model, processor, folder, files


def test_export_writes_a_hub_repository(exported):
    model, processor, folder, files = exported
    assert set(files) == set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "eval_results.json", "pipeline_instap.py"} <= set(files)
    assert MODEL_CODE | PROCESSOR_CODE <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_instap.InstAPConfig",
        "AutoModel": "modeling_instap.InstAPModel",
        "AutoModelForPreTraining": "modeling_instap.InstAPForPreTraining",
    }
    assert config["architectures"] == ["InstAPForPreTraining"]
    assert config["custom_pipelines"] == {
        "zero-shot-video-classification": {
            "impl": "pipeline_instap.InstAPZeroShotVideoClassificationPipeline", "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_instap.InstAPProcessor"
    assert processor_config["video_processor"]["auto_map"]["AutoVideoProcessor"] == (
        "video_processing_instap.InstAPVideoProcessor"
    )
    # Every file the copied processor/model code imports relatively (recursively) was copied too.
    for entry in ("processing_instap.py", "modeling_instap.py", "pipeline_instap.py"):
        for needed in get_relative_import_files(str(folder / entry)):
            assert os.path.isfile(needed), needed
    assert check_hub_folder(folder) == []
    # The weights are the model's, in safetensors.
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        saved = {key: handle.get_tensor(key) for key in handle.keys()}
    state = model.state_dict()
    assert torch.equal(saved["instap.temperature"], state["instap.temperature"])
    assert any(key.startswith("distillation.teacher.") for key in saved)
    # The measured results (not NaN) are in the card, with the pipeline's Hub task.
    readme = (folder / "README.md").read_text()
    assert "t2v_r1_reranked" in readme and "org/instap-tiny" in readme and "nan" not in readme.split("---")[1]
    assert "pipeline_tag: video-classification" in readme
    assert json.loads((folder / "eval_results.json").read_text())["global_step"] == 7


def test_plain_saves_write_the_same_remote_code_as_the_export(tmp_path, exported):
    """Training outputs and checkpoints are plain `save_pretrained` calls: they must be as complete as an export."""
    model, processor, folder, files = exported
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    plain = set(os.listdir(tmp_path / "plain"))
    assert (set(files) - {"README.md", "eval_results.json"}) <= plain
    for name in ("config.json", "processor_config.json"):
        assert json.loads((tmp_path / "plain" / name).read_text()) == json.loads((folder / name).read_text())
    assert check_hub_folder(tmp_path / "plain") == ["README.md (the model card) is missing"]  # run_align writes one


def test_backbone_only_export(tmp_path, exported):
    model, processor, _, _ = exported
    files = export_for_hub(model, processor, tmp_path / "backbone", backbone_only=True)
    with safe_open(str(tmp_path / "backbone" / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not [k for k in keys if k.startswith(("distillation.", "mlm_head.", "instap."))]
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["architectures"] == ["InstAPModel"]
    assert "README.md" in files and check_hub_folder(tmp_path / "backbone") == []


def test_check_hub_folder_reports_what_would_break(tmp_path, exported):
    model, processor, folder, _ = exported
    # A training output folder without its card, with a pickle, and a processor config that lost its auto_map.
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    processor.save_pretrained(plain)
    (plain / "training_args.bin").write_bytes(b"\x80\x04.")
    processor_config = json.loads((plain / "processor_config.json").read_text())
    del processor_config["auto_map"]
    (plain / "processor_config.json").write_text(json.dumps(processor_config))
    problems = check_hub_folder(plain)
    assert any("no AutoProcessor" in p for p in problems)
    assert any("README.md" in p for p in problems)
    assert any("pickled" in p for p in problems)
    # An export missing one relatively imported file, and copied code importing an InstAP package.
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "records.py").unlink()
    (broken / "extra_instap.py").write_text("from instap_processing import InstAPProcessor\n")
    problems = check_hub_folder(broken)
    assert any("processing_instap.py" in p and ".records" in p for p in problems)
    assert any("extra_instap.py" in p and "instap_processing" in p for p in problems)
    with pytest.raises(TypeError, match="InstAP model"):
        export_for_hub(torch.nn.Linear(2, 2), processor, tmp_path / "nope")
    # LoRA adapters must be merged first: a PeftModel would save only the adapters.
    from instap_train.peft_utils import apply_lora

    with pytest.raises(TypeError, match="merge"):
        export_for_hub(apply_lora(make_model(pretraining=False)), processor, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()


_REMOTE_SCRIPT = """
import json
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor, AutoVideoProcessor

folder, reference_file, snapshot = sys.argv[1:4]
ref = torch.load(reference_file, weights_only=True)
video = ref["video"].numpy()
instances = [[{"caption": "a red square", "boxes": [[2, 12, 18, 32]], "frame_index": [0]}]]


def check(source):
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    assert type(config).__name__ == "InstAPConfig" and type(config).__module__.startswith("transformers_modules.")
    video_processor = AutoVideoProcessor.from_pretrained(source, trust_remote_code=True)
    assert type(video_processor).__name__ == "InstAPVideoProcessor", type(video_processor)
    assert type(video_processor).__module__.startswith("transformers_modules."), type(video_processor).__module__
    torch.testing.assert_close(video_processor([video])["pixel_values"], ref["video_pixel_values"], rtol=0, atol=0)

    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    assert type(processor).__name__ == "InstAPProcessor" and type(processor).__module__.startswith("transformers_modules.")
    batch = processor(videos=[video], text=["a red square moving right"], instances=instances, sample_ids=["s0"])
    for key in ("pixel_values", "input_ids", "attention_mask", "source_ids", "instance_pixel_values",
                "instance_input_ids", "instance_sample_index"):
        torch.testing.assert_close(batch[key], ref["batch." + key], rtol=0, atol=0, msg=key)

    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    assert type(model).__name__ == "InstAPModel" and type(model).__module__.startswith("transformers_modules.")
    texts = processor.tokenize(["a red square", "a green field", "the blue circle"])
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], **texts)
    torch.testing.assert_close(out.logits_per_video, ref["logits_per_video"])
    torch.testing.assert_close(out.video_embeds, ref["video_embeds"])
    return model


check(folder)
stage2 = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
assert type(stage2).__name__ == "InstAPForPreTraining"

# The same as a Hub user: repository id, offline, from the pre-populated cache.
from huggingface_hub import snapshot_download

assert snapshot_download("org/instap-tiny") == snapshot, snapshot_download("org/instap-tiny")
model = check("org/instap-tiny")
assert "org" in type(model).__module__ and snapshot.rsplit("/", 1)[-1] in type(model).__module__

assert_no_project_imports()
print("REMOTE-OK")
"""


def test_remote_code_load_from_folder_and_hub_cache(tmp_path, exported):
    """Fresh process, cwd /tmp, HF_HUB_OFFLINE=1, InstAP packages not importable: the Auto classes reproduce the
    processor outputs and the logits, from the folder and as `org/instap-tiny` from a Hub cache."""
    model, processor, folder, _ = exported
    video = np.random.default_rng(0).integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    instances = [[{"caption": "a red square", "boxes": [[2, 12, 18, 32]], "frame_index": [0]}]]
    batch = processor(videos=[video], text=["a red square moving right"], instances=instances, sample_ids=["s0"])
    assert "instance_pixel_values" in batch
    texts = processor.tokenize(["a red square", "a green field", "the blue circle"])
    with torch.no_grad():
        out = model.instap(pixel_values=batch["pixel_values"], **texts)
    reference = {
        "video": torch.from_numpy(video),
        "video_pixel_values": processor.video_processor([video])["pixel_values"],
        "logits_per_video": out.logits_per_video,
        "video_embeds": out.video_embeds,
        **{f"batch.{k}": v for k, v in batch.items() if isinstance(v, torch.Tensor)},
    }
    reference_file = tmp_path / "reference.pt"
    torch.save(reference, reference_file)
    # Softmax scores must be informative: a low τ spreads the logits.
    assert out.logits_per_video.softmax(-1).max() > 0.4

    cache = tmp_path / "hub"
    snapshot = populate_hub_cache(folder, "org/instap-tiny", cache)
    assert (cache / "models--org--instap-tiny" / "refs" / "main").read_text() == os.path.basename(snapshot)
    assert os.path.islink(os.path.join(snapshot, "model.safetensors"))

    result = run_fresh(_REMOTE_SCRIPT, [str(folder), str(reference_file), snapshot], tmp_path, HF_HUB_CACHE=str(cache))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "REMOTE-OK" in result.stdout
