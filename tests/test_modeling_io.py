"""Serialisation of the InstAP models: save/load round trips, the Auto classes, the remote-code load in a fresh
process, and the parameter counts of the real presets (built on the meta device, nothing allocated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from instap_model_testing import make_batch, make_captions, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from modeling_instap import InstAPConfig, InstAPForPreTraining, InstAPModel

AUTO_MAP = {
    "AutoConfig": "configuration_instap.InstAPConfig",
    "AutoModel": "modeling_instap.InstAPModel",
    "AutoModelForPreTraining": "modeling_instap.InstAPForPreTraining",
}
REMOTE_FILES = {"configuration_instap.py", "modeling_instap.py", "losses.py", "masking.py"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _model_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids, mask = make_captions(3, 8, g)
    return {"pixel_values": torch.randn(3, 4, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask}


def _perturb_temperatures(model: InstAPModel) -> None:
    # Non-default values, so that a load which re-runs the initialisation would show.
    with torch.no_grad():
        model.temperature.fill_(0.031)
        model.instance_temperature.fill_(0.123)


def _assert_saved_folder(folder: str, architecture: str) -> None:
    files = set(os.listdir(folder))
    assert "model.safetensors" in files
    assert not {"pytorch_model.bin", "model.safetensors.index.json"} & files
    assert REMOTE_FILES <= files, f"remote-code files missing: {REMOTE_FILES - files}"
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)
    assert saved["model_type"] == "instap"
    assert saved["architectures"] == [architecture]
    assert saved["auto_map"] == AUTO_MAP


def test_model_save_load_round_trip(tmp_path):
    model = InstAPModel(tiny_config()).eval()
    _perturb_temperatures(model)
    model.save_pretrained(tmp_path)
    _assert_saved_folder(str(tmp_path), "InstAPModel")
    loaded = InstAPModel.from_pretrained(tmp_path).eval()
    assert loaded.temperature.item() == pytest.approx(0.031) and loaded.instance_temperature.item() == pytest.approx(0.123)
    reference, state = model.state_dict(), loaded.state_dict()
    assert set(reference) == set(state)
    assert all(torch.equal(reference[k], state[k]) for k in reference)
    inputs = _model_inputs()
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
    torch.testing.assert_close(a.logits_per_video, b.logits_per_video, rtol=0, atol=0)
    torch.testing.assert_close(a.video_embeds, b.video_embeds, rtol=0, atol=0)
    torch.testing.assert_close(a.text_embeds, b.text_embeds, rtol=0, atol=0)


def test_pretraining_save_load_round_trip(tmp_path):
    config = tiny_config()
    model = InstAPForPreTraining(config).eval()
    _perturb_temperatures(model.instap)
    model.save_pretrained(tmp_path)
    _assert_saved_folder(str(tmp_path), "InstAPForPreTraining")
    loaded = InstAPForPreTraining.from_pretrained(tmp_path)
    loaded.eval()
    # Tied MLM decoder, frozen eval-mode teacher survive the round trip.
    assert loaded.mlm_head.decoder.weight is loaded.instap.text_model.embeddings.word_embeddings.weight
    assert all(not p.requires_grad for p in loaded.distillation.teacher.parameters())
    loaded.train()
    assert not loaded.distillation.teacher.training
    loaded.eval()
    reference, state = model.state_dict(), loaded.state_dict()
    assert set(reference) == set(state)
    assert all(torch.equal(reference[k], state[k]) for k in reference)
    # The step draws masks and negatives: same seed, same draws (identical masks), the same outputs. To float
    # rounding only: a CPU matmul's result depends on its operands' 16-byte alignment, which differs between the
    # two models' weights (measured: 4e-6 on a 512 x 64 product).
    batch = make_batch(config)
    outputs = []
    for m in (model, loaded):
        torch.manual_seed(1234)
        with torch.no_grad():
            outputs.append(m(**batch))
    a, b = outputs
    assert torch.equal(a.bool_masked_pos, b.bool_masked_pos)
    for name in ("loss", "loss_rec", "loss_vtc", "loss_vtm", "loss_mlm", "loss_inst_vtc", "loss_inst_vtm",
                 "loss_inst_mlm", "logits_per_video"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, msg=name)


def test_auto_classes_after_import(tmp_path):
    backbone = InstAPModel(tiny_config()).eval()
    backbone.save_pretrained(tmp_path / "backbone")
    config = AutoConfig.from_pretrained(tmp_path / "backbone")
    assert type(config) is InstAPConfig
    loaded = AutoModel.from_pretrained(tmp_path / "backbone")
    assert type(loaded) is InstAPModel

    # A stage-2 checkpoint loads as the backbone (AutoModel) and as itself (AutoModelForPreTraining).
    stage2 = InstAPForPreTraining(tiny_config()).eval()
    stage2.save_pretrained(tmp_path / "stage2")
    pretraining = AutoModelForPreTraining.from_pretrained(tmp_path / "stage2")
    assert type(pretraining) is InstAPForPreTraining
    backbone2, info = AutoModel.from_pretrained(tmp_path / "stage2", output_loading_info=True)
    assert type(backbone2) is InstAPModel
    assert not info["missing_keys"] and not info["mismatched_keys"]
    expected = stage2.instap.state_dict()
    state = backbone2.state_dict()
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoModel, AutoModelForPreTraining

    backbone_dir, stage2_dir, reference_file = sys.argv[1:4]
    ref = torch.load(reference_file, weights_only=True)
    inputs = {k: ref[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    model = AutoModel.from_pretrained(backbone_dir, trust_remote_code=True).eval()
    assert type(model).__name__ == "InstAPModel", type(model)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.logits_per_video, ref["logits_per_video"])
    torch.testing.assert_close(out.video_embeds, ref["video_embeds"])
    torch.testing.assert_close(out.text_embeds, ref["text_embeds"])

    # The stage-2 checkpoint, as the backbone and as the pre-training model.
    backbone = AutoModel.from_pretrained(stage2_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(**inputs).logits_per_video, ref["stage2_logits_per_video"])
    stage2 = AutoModelForPreTraining.from_pretrained(stage2_dir, trust_remote_code=True).eval()
    assert type(stage2).__name__ == "InstAPForPreTraining", type(stage2)
    batch = {k[len("batch."):]: v for k, v in ref.items() if k.startswith("batch.")}
    torch.manual_seed(1234)
    with torch.no_grad():
        loss = stage2(**batch).loss
    torch.testing.assert_close(loss, ref["stage2_loss"])

    leaked = sorted(name for name in sys.modules if name.split(".")[0] == "modeling_instap")
    assert not leaked, leaked
    print("REMOTE-OK")
    """
)


def test_remote_code_load_in_a_fresh_process(tmp_path):
    """`trust_remote_code=True` from the saved folder alone, in a process that never imports modeling_instap."""
    backbone = InstAPModel(tiny_config()).eval()
    _perturb_temperatures(backbone)
    backbone.save_pretrained(tmp_path / "backbone")
    config = tiny_config()
    stage2 = InstAPForPreTraining(config).eval()
    stage2.save_pretrained(tmp_path / "stage2")
    inputs = _model_inputs()
    batch = make_batch(config)
    with torch.no_grad():
        out = backbone(**inputs)
        stage2_logits = stage2.instap(**inputs).logits_per_video
        torch.manual_seed(1234)
        stage2_loss = stage2(**batch).loss
    reference = {
        **inputs,
        "logits_per_video": out.logits_per_video,
        "video_embeds": out.video_embeds,
        "text_embeds": out.text_embeds,
        "stage2_logits_per_video": stage2_logits,
        "stage2_loss": stage2_loss,
        **{f"batch.{k}": v for k, v in batch.items()},
    }
    reference_file = tmp_path / "reference.pt"
    torch.save(reference, reference_file)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), OMP_NUM_THREADS="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_SCRIPT, str(tmp_path / "backbone"), str(tmp_path / "stage2"),
         str(reference_file)],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "REMOTE-OK" in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts of the real presets (meta device)
# ----------------------------------------------------------------------------------------------------------------

# InstAPForPreTraining, tied MLM decoder counted once. "heads" are the K student distillation heads, "mlm" the
# untied part of the MLM head, "other" W_v, W_t, the matching head and the two temperatures.
#
# | preset   |       total |      vision |        text |     teacher | attn pool |     heads |       mlm |     other | trainable (total - teacher) |
# |----------|------------:|------------:|------------:|------------:|----------:|----------:|----------:|----------:|------------:|
# | instap-l | 982,126,398 | 303,076,352 | 355,094,528 | 303,966,208 | 12,598,272 | 4,732,416 | 1,082,170 | 1,576,452 | 678,160,190 |
# | instap-b | 298,684,478 |  85,638,912 | 115,983,360 |  86,192,640 |  7,089,408 | 2,368,512 |   622,650 |   788,996 | 212,491,838 |
EXPECTED_PARAMETERS = {
    "instap-l": {
        "total": 982_126_398, "vision": 303_076_352, "text": 355_094_528, "teacher": 303_966_208,
        "attention_pool": 12_598_272, "distillation_heads": 4_732_416, "mlm_head": 1_082_170, "other": 1_576_452,
        "trainable": 678_160_190,
    },
    "instap-b": {
        "total": 298_684_478, "vision": 85_638_912, "text": 115_983_360, "teacher": 86_192_640,
        "attention_pool": 7_089_408, "distillation_heads": 2_368_512, "mlm_head": 622_650, "other": 788_996,
        "trainable": 212_491_838,
    },
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(model: InstAPForPreTraining) -> dict[str, int]:
    """Parameter counts of a stage-2 model by part (each shared tensor once)."""
    instap = model.instap
    vision, text, pool = _count(instap.vision_model), _count(instap.text_model), _count(instap.attention_pool)
    return {
        "total": _count(model),
        "vision": vision,
        "text": text,
        "teacher": _count(model.distillation.teacher),
        "attention_pool": pool,
        "distillation_heads": _count(model.distillation.heads),
        "mlm_head": _count(model.mlm_head) - model.mlm_head.decoder.weight.numel(),  # decoder tied to the embeddings
        # Named, not a residual: the sum check below then fails if a parameter lives outside every listed part.
        "other": sum(_count(m) for m in (instap.visual_projection, instap.text_projection, instap.itm_head))
        + instap.temperature.numel() + instap.instance_temperature.numel(),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def format_parameter_table(breakdowns: dict[str, dict[str, int]]) -> str:
    """Markdown table of `parameter_breakdown` results, for the README."""
    columns = list(next(iter(breakdowns.values())))
    lines = ["| preset | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for preset, counts in breakdowns.items():
        lines.append(f"| {preset} | " + " | ".join(f"{counts[c]:,}" for c in columns) + " |")
    return "\n".join(lines)


def _vit_parameters(width: int, depth: int, mlp: int, patch: int) -> int:
    # UMT block: q/v bias but no k bias; two LayerNorms; Conv3d tubelet 1 with bias; final and pool norms.
    block = 4 * width * width + 3 * width + 2 * width * mlp + mlp + width + 4 * width
    return 3 * patch * patch * width + width + depth * block + 4 * width


def _bert_parameters(width: int, depth: int, mlp: int, fusion_from: int, video_width: int, vocab=30522) -> int:
    embeddings = vocab * width + 512 * width + 2 * width + 2 * width
    layer = 4 * (width * width + width) + 2 * width + 2 * width * mlp + mlp + width + 2 * width
    cross = 2 * (width * width + width) + 2 * (video_width * width + width) + 2 * width
    return embeddings + depth * layer + (depth - fusion_from) * cross


def _clip_vision_parameters(width: int, depth: int, mlp: int, patch: int, image: int, projection: int) -> int:
    layer = 4 * (width * width + width) + 2 * width * mlp + mlp + width + 4 * width
    positions = (image // patch) ** 2 + 1
    return 3 * patch * patch * width + width + positions * width + 2 * width + depth * layer + 2 * width + width * projection


@pytest.mark.parametrize("preset", ["instap-l", "instap-b"])
def test_preset_parameter_counts_on_meta_device(preset):
    config = InstAPConfig.from_preset(preset)
    with torch.device("meta"):
        model = InstAPForPreTraining(config)
    assert all(p.is_meta for p in model.parameters())
    breakdown = parameter_breakdown(model)
    print(f"\n{format_parameter_table({preset: breakdown})}")
    assert breakdown == EXPECTED_PARAMETERS[preset]
    assert breakdown["total"] == sum(v for k, v in breakdown.items() if k not in ("total", "trainable"))
    assert breakdown["trainable"] == breakdown["total"] - breakdown["teacher"]
    # The big parts agree with closed-form counts of the architectures.
    v, t, c = config.vision_config, config.text_config, config.teacher_config
    assert breakdown["vision"] == _vit_parameters(v.hidden_size, v.num_hidden_layers, v.intermediate_size, v.patch_size)
    assert breakdown["text"] == _bert_parameters(
        t.hidden_size, t.num_hidden_layers, t.intermediate_size, t.fusion_layer, v.hidden_size
    )
    assert breakdown["teacher"] == _clip_vision_parameters(
        c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.patch_size, c.image_size, c.projection_dim
    )
