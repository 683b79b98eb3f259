"""Quantization on a real tiny Llama: int8 dynamic, int8 and int4 weight-only, auto; round trip,
closeness to the float model, size, kernels, lineage, pruned input, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from typer.testing import CliRunner

from compress.measure import next_token_stats
from compress.prune import PruneConfig, prune_depth
from compress.quantize import (AUTO_METHODS, STATE_DICT_NAME, TORCH_METHODS, Int8WeightLinear, QuantizeConfig,
                               load_quantized, quantize,
                               quantize_int8, quantize_linears, quantize_model, quantize_smooth, smooth_activations)
from dataengine.store import Store
from student.format import direct_prompt
from student.generate import load_model
from student.manifest import dir_bytes, read_manifest
from student.tiny import build_tiny_model
from supertiny.cli import app
from supertiny.errors import UserError
from tools.registry import get_domain

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


# ---- the three methods ----------------------------------------------------------------------

KERNEL = {"int8-dynamic": "quantized::linear_dynamic", "int8-smooth": "quantized::linear_dynamic",
          "int8-weight": "aten::_weight_int8pack_mm",
          "int4-weight": "aten::_weight_int4pack_mm_for_cpu",
          "onnx-int8": "onnxruntime::MatMulNBits", "onnx-int4": "onnxruntime::MatMulNBits"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Timings inside auto run beside other processes: one thread keeps OpenMP from spinning.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each method applied without measurements (no texts; int8-smooth smooths with them) and saved."""
    out = tmp_path_factory.mktemp("methods")
    for method in TORCH_METHODS:
        quantize(tiny_dir, out / method, QuantizeConfig(method=method), TEXTS if method == "int8-smooth" else None)
    return {method: out / method for method in TORCH_METHODS}


@pytest.mark.parametrize("method", TORCH_METHODS)
def test_round_trip_gives_the_outputs_of_before_saving(tiny_dir: Path, saved: dict[str, Path], method: str) -> None:
    before = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    after, tokenizer = load_model(saved[method])
    if method == "int8-smooth":  # the same smoothing the saved model got: factors from TEXTS
        smooth_activations(before, tokenizer, TEXTS, alpha=QuantizeConfig().smooth_alpha)
    quantize_model(before, method)  # student.generate dispatches on kind "quantized"
    assert read_manifest(saved[method])["method"] == method
    for text in TEXTS[:3]:
        seq_before, logits_before = _greedy(before, tokenizer, text)
        seq_after, logits_after = _greedy(after, tokenizer, text)
        assert torch.equal(seq_before, seq_after)
        torch.testing.assert_close(logits_after, logits_before, atol=1e-6, rtol=1e-6)


# Relative logit error and greedy agreement with float32 (measured 0.03 / 0.015 / 0.15 and
# 100% / 100% / 77% on this model); a wrong scale or nibble order would be off by far more.
CLOSE = {"int8-dynamic": (0.06, 0.9), "int8-smooth": (0.06, 0.9), "int8-weight": (0.04, 0.9),
         "int4-weight": (0.3, 0.6)}


@pytest.mark.parametrize("method", TORCH_METHODS)
def test_quantized_stays_close_to_float(tiny_dir: Path, saved: dict[str, Path], method: str) -> None:
    model_fp32 = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model_q, tokenizer = load_quantized(saved[method])
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref, got = model_fp32(**batch).logits, model_q(**batch).logits
    max_rel, min_agreement = CLOSE[method]
    assert 0 < ((got - ref).norm() / ref.norm()).item() < max_rel
    stats = next_token_stats({"fp32": model_fp32, "q": model_q}, tokenizer, TEXTS, 64, reference="fp32")
    assert stats["q"]["agreement"] >= min_agreement


def test_weight_only_methods_share_one_int8_table_and_shrink_the_file(saved: dict[str, Path]) -> None:
    sizes = {m: (saved[m] / STATE_DICT_NAME).stat().st_size for m in TORCH_METHODS}
    for method in ("int8-weight", "int4-weight"):
        model, _ = load_quantized(saved[method])
        assert isinstance(model.lm_head, Int8WeightLinear)
        assert model.lm_head.weight_int8 is model.model.embed_tokens.weight_int8  # tied: one table
        assert not any(type(m) is nn.Linear for m in model.modules())
    # int8-dynamic keeps the fp32 embedding and down_proj; int4 halves the decoder Linears again.
    assert sizes["int4-weight"] < sizes["int8-weight"] < sizes["int8-dynamic"]


def test_auto_keeps_the_fastest_method_within_the_budget(tiny_dir: Path, tmp_path: Path) -> None:
    config = QuantizeConfig(method="auto", max_drop=0.5, eval_texts=5, timing_prompts=2, new_tokens=4, threads=2)
    manifest = quantize(tiny_dir, tmp_path / "auto", config, TEXTS)
    assert manifest["config"]["threads"] == 2 and torch.get_num_threads() == 1  # timed at 2, then restored
    measured = manifest["measured"]
    assert set(measured) == {"float32", *AUTO_METHODS}
    within = [m for m in AUTO_METHODS if measured[m]["accuracy_drop"] <= 0.5]
    assert manifest["method"] == min(within, key=lambda m: measured[m]["decode_ms_per_token"])
    for method in AUTO_METHODS:
        # Each method really ran its kernel, and the float model only aten::mm.
        assert KERNEL[method] in measured[method]["kernels"]
        assert measured[method]["decode_ms_per_token"] > 0 and 0 <= measured[method]["agreement"] <= 1
    assert set(measured["float32"]["kernels"]) == {"aten::mm"}
    assert manifest["kernels"] == measured[manifest["method"]]["kernels"]
    model, tokenizer = load_quantized(tmp_path / "auto")
    assert _greedy(model, tokenizer, TEXTS[0], new_tokens=3)[0].shape[1] == len(tokenizer(TEXTS[0])["input_ids"]) + 3


def test_bad_quantize_options_are_user_errors(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no calibration texts"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(method="auto"), [])
    with pytest.raises(UserError, match="--method int8-smooth: no calibration texts"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(method="int8-smooth"), [])
    with pytest.raises(UserError, match="threads=0"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(method="int8-weight", threads=0), TEXTS)
    with pytest.raises(UserError, match="smooth_alpha"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(method="int8-smooth", smooth_alpha=1.5), TEXTS)
    with pytest.raises(UserError, match="group_size"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(method="int4-weight", group_size=48), TEXTS)
    with pytest.raises(UserError, match="max_drop"):
        quantize(tiny_dir, tmp_path / "q", QuantizeConfig(max_drop=-0.1), TEXTS)
    assert not (tmp_path / "q").exists()


def test_cli_quantize_reports_method_kernels_and_measurements(tiny_dir: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "cli.db")
    store.add_tasks(get_domain("home").generate_tasks(seed=0, n_train=6, n_dev=0, n_test=0))  # held-out prompts
    result = CliRunner().invoke(app, ["--db", str(store.path), "compress", "quantize", str(tiny_dir), "--out",
                                      str(tmp_path / "q"), "--method", "int4-weight", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "q")["config"]["threads"] == 1
    row, = json.loads(result.stdout)
    assert row["kind"] == "quantized" and row["name"].endswith("-int4-weight") and row["method"] == "int4-weight"
    assert KERNEL["int4-weight"] in row["kernels"]
    assert set(row["measured"]) == {"float32", "int4-weight"}
    bad = CliRunner().invoke(app, ["--db", str(store.path), "compress", "quantize", str(tiny_dir), "--out",
                                   str(tmp_path / "x"), "--method", "int3"])
    assert bad.exit_code != 0 and "method" in str(bad.exception)


# ---- int8-smooth ----------------------------------------------------------------------------


def _with_activation_outlier(tiny_dir: Path) -> tuple[nn.Module, object]:
    """The tiny model with one input channel of layer 0's q/k/v made 300x larger, and those
    Linears' column divided by 300: the same function, with the kind of activation outlier
    that breaks per-tensor int8 activations in real models."""
    model, tokenizer = load_model(tiny_dir)
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.input_layernorm.weight[3] *= 300
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            linear.weight[:, 3] /= 300
    return model, tokenizer


def _relative_error(model: nn.Module, reference: torch.Tensor, batch: dict) -> float:
    with torch.inference_mode():
        return ((model(**batch).logits - reference).norm() / reference.norm()).item()


def test_smoothing_is_exact_in_float_and_rescues_int8_activations_from_an_outlier(tiny_dir: Path) -> None:
    import copy

    model, tokenizer = _with_activation_outlier(tiny_dir)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = model(**batch).logits
    embedding = model.model.embed_tokens.weight.detach().clone()

    smoothed = copy.deepcopy(model)
    assert smooth_activations(smoothed, tokenizer, TEXTS, alpha=0.75) == 4 * 6 + 1  # q,k,v,gate,up,down + head
    assert _relative_error(smoothed, reference, batch) < 1e-5  # folded exactly into the norms and up_proj
    assert smoothed.lm_head.weight is not smoothed.model.embed_tokens.weight  # untied: the embedding is not scaled
    assert torch.equal(smoothed.model.embed_tokens.weight, embedding)
    assert smoothed.model.layers[0].input_layernorm.weight[3] < model.model.layers[0].input_layernorm.weight[3] / 10

    plain = copy.deepcopy(model)
    plain.lm_head.weight = nn.Parameter(plain.lm_head.weight.detach().clone())
    quantize_smooth(plain)  # every Linear int8 dynamic, without smoothing
    quantize_smooth(smoothed)
    assert _relative_error(smoothed, reference, batch) < _relative_error(plain, reference, batch) / 2


def test_int4_fake_quant_computes_what_the_int4_kernel_computes_and_passes_gradients_straight(tiny_dir: Path) -> None:
    from torch.nn.utils import parametrize

    from compress.quantize import Int4FakeQuant, Int4WeightLinear, int4_aware, int4_dequantized, int4_unaware

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    latent = linear.weight.detach().clone()
    kernel = Int4WeightLinear.from_float(linear, 32)
    parametrize.register_parametrization(linear, "weight", Int4FakeQuant(32))
    x = torch.randn(5, 64)
    out = linear(x)
    float_out = torch.nn.functional.linear(x, latent, linear.bias)
    kernel_error, rounding = (out - kernel(x)).abs().max(), (out - float_out).abs().max()
    assert kernel_error < 0.1 * rounding  # only the kernel's bf16 activations differ
    assert torch.equal(int4_dequantized(linear.weight, 32), linear.weight)  # on the grid: rounds to itself
    # Straight-through: d(sum of outputs)/dW is what it would be for an unrounded Linear.
    out.sum().backward()
    original = linear.parametrizations.weight.original
    torch.testing.assert_close(original.grad, x.sum(0).expand(48, 64))
    assert torch.equal(original, latent)

    # On a model: exactly the Linears int4-weight stores as int4, and taken off again.
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    names = int4_aware(model, 32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir)
    quantize_model(reference, "int4-weight")
    assert names and names == [n for n, m in reference.named_modules() if isinstance(m, Int4WeightLinear)]
    int4_unaware(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
