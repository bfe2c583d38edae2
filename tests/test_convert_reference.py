"""The original's tiny reference weights -> `convert` as a user runs it -> from_pretrained: same as direct loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stllm.checkpoints.convert import main as convert_main
from stllm.checkpoints.keymap import convert_original_state_dict, load_original_state_dict
from stllm.models.modeling import StllmForConditionalGeneration
from stllm.models.vision import encode_frames
from tests.helpers import REFERENCE as REF
from tests.helpers import reference_config


def _load(out: Path) -> StllmForConditionalGeneration:
    model, info = StllmForConditionalGeneration.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("name", ["qa", "conversation"])
def test_released_layout_converts_and_loads_identically(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "config.json"
    reference_config(name).to_json_file(str(cfg))
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").symlink_to(REF / f"weights_{name}.safetensors")
    out = tmp_path / "out"
    tok = REF / "tokenizers"
    assert (
        convert_main(
            [
                "--from-stllm",
                str(src),
                "--recipe",
                name,
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--dtype",
                "float32",
                "--llm-tokenizer",
                str(tok / "llama_tiny" / "tokenizer.model"),
                "--qformer-vocab",
                str(tok / "bert_tiny" / "vocab.txt"),
            ]
        )
        == 0
    )
    ours = _load(out)
    direct = StllmForConditionalGeneration(reference_config(name)).eval()
    load_original_state_dict(direct, load_file(REF / f"weights_{name}.safetensors"))
    a, b = ours.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    videos = load_file(REF / "inputs_videos.safetensors")["video_qa" if name == "qa" else "video_conversation"]
    b_, t = videos.shape[:2]
    with torch.no_grad():
        x1, _ = encode_frames(ours.vision_model, ours.btadapter, videos.flatten(0, 1), t)
        x2, _ = encode_frames(direct.vision_model, direct.btadapter, videos.flatten(0, 1), t)
    assert torch.equal(x1, x2)
    assert (out / "tokenizer.model").is_file() and (out / "qformer_tokenizer" / "vocab.txt").is_file()
    assert (
        "MVBench" in (out / "README.md").read_text()
        if name == "qa"
        else "VideoChatGPT" in (out / "README.md").read_text()
    )


@pytest.mark.parametrize("name", ["qa", "conversation"])
def test_lavis_start_matches_the_original_build(tmp_path: Path, name: str) -> None:
    """llm_proj -> llama_proj, BT-Adapter spatial = last EVA blocks, EVA linears rounded through fp16."""
    cfg = tmp_path / "config.json"
    reference_config(name).to_json_file(str(cfg))
    torch.save(load_file(REF / "loading_eva_vit_g_tiny.safetensors"), tmp_path / "eva_vit_g.pth")  # flat dict
    torch.save({"model": load_file(REF / "loading_instructblip_trimmed_tiny.safetensors")}, tmp_path / "ib.pth")
    weights = load_file(REF / f"weights_{name}.safetensors")
    vicuna = {
        k: v[:512].clone() if "embed_tokens" in k or "lm_head" in k else v
        for k, v in weights.items()
        if k.startswith("lm_head") or (k.startswith("model.") and not k.startswith("model.stllm_model."))
    }
    (tmp_path / "vicuna").mkdir()
    save_file(vicuna, tmp_path / "vicuna" / "model.safetensors")
    out = tmp_path / "out"
    assert (
        convert_main(
            [
                "--from-lavis",
                "--eva",
                str(tmp_path / "eva_vit_g.pth"),
                "--qformer",
                str(tmp_path / "ib.pth"),
                "--llm",
                str(tmp_path / "vicuna"),
                "--recipe",
                name,
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--llm-tokenizer",
                str(REF / "tokenizers" / "llama_tiny" / "tokenizer.model"),
                "--qformer-vocab",
                str(REF / "tokenizers" / "bert_tiny" / "vocab.txt"),
            ]
        )
        == 0
    )
    ours = _load(out).state_dict()
    built = load_file(REF / f"loading_{name}_stllm_model_after_build.safetensors")
    expect = convert_original_state_dict({"model.stllm_model." + k: v for k, v in built.items()}).state_dict
    assert len(expect) > 100
    for k, v in expect.items():
        assert torch.equal(ours[k], v), k
    emb = ours["language_model.model.embed_tokens.weight"]
    assert torch.equal(emb[:512], vicuna["model.embed_tokens.weight"])
    assert 0.005 < emb[512].std() < 0.05  # the [PAD] row: N(0, 0.02) (docs/original.md §1.6)
    if name == "qa":
        assert (
            torch.count_nonzero(ours["btadapter.temporal.0.temporal_fc.weight"]) == 0
        )  # zero-init (docs/original.md §1.3)
        assert 0.5 < ours["btadapter.position_embedding.weight"].std() < 1.5  # nn.Embedding default N(0, 1)
    else:
        assert torch.count_nonzero(ours["global_adapter.up_proj.weight"]) == 0  # adds exactly 0 (docs/original.md §1.7)
    report = (out / "conversion_report.json").read_text()
    assert "initialised" in report and "eva_vit_g.pth" in report
