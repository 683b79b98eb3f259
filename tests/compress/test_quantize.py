"""int8 dynamic quantization on a real tiny Llama: round trip, size, lineage, pruned input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.prune import PruneConfig, prune_depth
from compress.quantize import STATE_DICT_NAME, load_quantized, quantize_int8, quantize_linears
from student.format import direct_prompt
from student.manifest import dir_bytes, read_manifest
from student.tiny import build_tiny_model
from supertiny.errors import UserError

TEXTS = [
    direct_prompt(u, {"now": "2026-03-14T09:30", "weekday": "Saturday"})
    for u in (
        "turn off the kitchen lights",
        "set the thermostat to 21 degrees",
        "remind me to call mom at 6pm",
        "lock the front door",
        "play some jazz in the living room",
    )
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 128: big enough that the Linear weights, not tokenizer files, dominate the bytes.
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TEXTS, hidden_size=128, num_layers=4)


@pytest.fixture(scope="module")
def quantized(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quantized")
    return out, quantize_int8(tiny_dir, out)


def _greedy(model: nn.Module, tokenizer, text: str, new_tokens: int = 8):
    batch = tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **batch, max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
    return out.sequences, torch.stack(out.logits)


def test_reload_matches_freshly_quantized_model(tiny_dir: Path, quantized: tuple[Path, dict]) -> None:
    out, _ = quantized
    fresh = quantize_linears(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval())
    reloaded, tokenizer = load_quantized(out)
    assert not reloaded.training
    for text in TEXTS[:3]:
        seq_fresh, logits_fresh = _greedy(fresh, tokenizer, text)
        seq_reloaded, logits_reloaded = _greedy(reloaded, tokenizer, text)
        assert torch.equal(seq_fresh, seq_reloaded)
        torch.testing.assert_close(logits_reloaded, logits_fresh, atol=1e-5, rtol=1e-5)


def test_linears_are_int8_and_lm_head_stays_tied(quantized: tuple[Path, dict]) -> None:
    model, _ = load_quantized(quantized[0])
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, torch.ao.nn.quantized.dynamic.Linear)
    float_linears = {n for n, m in model.model.layers.named_modules() if type(m) is nn.Linear}
    assert float_linears and all(n.endswith("mlp.down_proj") for n in float_linears)
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_quantized_close_to_float_model(tiny_dir: Path, quantized: tuple[Path, dict]) -> None:
    model_fp32 = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model_q, tokenizer = load_quantized(quantized[0])
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = model_fp32(**batch).logits
        got = model_q(**batch).logits
    # int8 weights + per-batch int8 activations: small but non-zero error on every logit.
    rel = (got - ref).norm() / ref.norm()
    assert 0 < rel < 0.1


def test_smaller_on_disk_than_fp32(tiny_dir: Path, quantized: tuple[Path, dict]) -> None:
    out, manifest = quantized
    assert manifest["bytes"] == dir_bytes(out) - (out / "supertiny_manifest.json").stat().st_size
    assert manifest["bytes"] < 0.6 * dir_bytes(tiny_dir)
    assert (out / STATE_DICT_NAME).stat().st_size < 0.5 * (tiny_dir / "model.safetensors").stat().st_size


def test_manifest_records_lineage(tiny_dir: Path, quantized: tuple[Path, dict]) -> None:
    manifest = read_manifest(quantized[0])
    assert manifest["kind"] == "quantized"
    assert manifest["parent"] == str(tiny_dir)
    assert manifest["params"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())


def test_quantize_a_pruned_model(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "base", TEXTS, num_layers=6)
    pruned = tmp_path / "pruned"
    prune_depth(base, pruned, PruneConfig(target_param_ratio=0.8, calibration_samples=4), TEXTS)
    manifest = quantize_int8(pruned, tmp_path / "q")
    assert manifest["parent"] == str(pruned)
    model, tokenizer = load_quantized(tmp_path / "q")
    assert len(model.model.layers) == read_manifest(pruned)["num_layers_after"] < 6
    sequences, _ = _greedy(model, tokenizer, TEXTS[0], new_tokens=4)
    assert sequences.shape[1] == len(tokenizer(TEXTS[0])["input_ids"]) + 4


def test_missing_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=STATE_DICT_NAME):
        load_quantized(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        quantize_int8(tmp_path / "nope", tmp_path / "out")
