"""Export to ONNX Runtime (onnxruntime-genai's builder) and the runtime adapter, on real tiny
Llamas: float export computes the float model, int8/int4 stay close and shrink, a student's
constrained answers and sampling go through it as through transformers."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compress.bench import weight_bytes_per_token
from compress.onnx import OnnxCausalLM, export_onnx, graph_ops, load_onnx, weight_bytes_per_token as onnx_bytes
from compress.quantize import QuantizeConfig, load_quantized, quantize
from student.format import direct_prompt
from student.generate import DirectStudent, load_model
from student.manifest import dir_bytes, read_manifest
from student.tiny import build_tiny_model
from supertiny.errors import UserError
from tests.agent.lights_domain import CONTEXT
from tests.tiny_agents import direct_student

TEXTS = [direct_prompt(u, {"now": "2026-03-14T09:30"}) for u in (
    "turn off the kitchen lights", "set the thermostat to 21 degrees", "lock the front door",
    "play some jazz in the living room")]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain tiny Llama, and one with grouped-query attention and an explicit head_dim (the
    shape width pruning leaves: 4 query heads of 32 on a hidden size of 64, 2 key/value heads)."""
    root = tmp_path_factory.mktemp("onnx-tiny")
    plain = build_tiny_model(root / "plain", TEXTS, hidden_size=128, num_layers=3)
    config = AutoConfig.from_pretrained(plain)
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim = 64, 4, 2, 32
    torch.manual_seed(1)
    gqa = AutoModelForCausalLM.from_config(config)
    gqa.save_pretrained(root / "gqa")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(plain / name, root / "gqa" / name)
    return {"plain": plain, "gqa": root / "gqa"}


@pytest.fixture(scope="module")
def exported(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("onnx-exported")
    out = {}
    for shape, model_dir in tiny_dirs.items():
        for method in ("onnx-fp32", "onnx-int8", "onnx-int4") if shape == "plain" else ("onnx-fp32",):
            out[shape, method] = root / f"{shape}-{method}"
            quantize(model_dir, out[shape, method], QuantizeConfig(method=method))
    return out


def _padded(tokenizer, texts: list[str], side: str):
    tokenizer.padding_side = side
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("shape", ["plain", "gqa"])
def test_float_export_computes_the_float_model_and_generates_what_transformers_generates(
        tiny_dirs: dict[str, Path], exported: dict, shape: str) -> None:
    ref = AutoModelForCausalLM.from_pretrained(tiny_dirs[shape]).eval()
    model, tokenizer = load_model(exported[shape, "onnx-fp32"])  # kind "quantized" dispatches on the method
    assert isinstance(model, OnnxCausalLM)
    batch = _padded(tokenizer, TEXTS, "right")
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits[real], ref(**batch).logits[real], atol=1e-4, rtol=1e-4)
    batch = _padded(tokenizer, TEXTS, "left")  # rows of different lengths; EOS ends some rows early
    options = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        assert torch.equal(model.generate(**batch, **options), ref.generate(**batch, **options))


def test_int8_and_int4_weights_stay_close_to_float_run_matmulnbits_and_shrink(tiny_dirs, exported) -> None:
    ref = AutoModelForCausalLM.from_pretrained(tiny_dirs["plain"]).eval()
    sizes, per_token = {}, {}
    for method, max_rel in (("onnx-fp32", 1e-5), ("onnx-int8", 0.05), ("onnx-int4", 0.35)):
        path = exported["plain", method]
        model, tokenizer = load_onnx(path)
        batch = _padded(tokenizer, TEXTS, "right")
        real = batch["attention_mask"].bool()
        with torch.inference_mode():
            got, want = model(**batch).logits[real], ref(**batch).logits[real]
        assert ((got - want).norm() / want.norm()).item() < max_rel
        ops = graph_ops(path)
        # Every projection and the head: 7 per layer with q/k/v fused into one -> 5, + the head.
        assert ops.get("MatMulNBits", 0) == (0 if method == "onnx-fp32" else 3 * 5 + 1)
        assert read_manifest(path)["quantization"] == {"method": method, "group_size": 32,
                                                       "runtime": "onnxruntime-genai"}
        sizes[method], per_token[method] = dir_bytes(path), onnx_bytes(path)
    assert sizes["onnx-int4"] < sizes["onnx-int8"] < sizes["onnx-fp32"]
    # The float graph reads what the torch model reads per token (minus nothing: the tied table
    # is the head); int8 with one fp32 scale per 32 weights reads 1/4 + 1/32 of that for the Linears.
    float_bytes = weight_bytes_per_token(ref)
    assert abs(per_token["onnx-fp32"] - float_bytes) / float_bytes < 0.05
    assert per_token["onnx-int4"] < per_token["onnx-int8"] < 0.45 * per_token["onnx-fp32"]


def test_a_students_constrained_answers_are_the_same_through_the_float_export(tmp_path_factory, tmp_path) -> None:
    student = direct_student(tmp_path_factory.getbasetemp() / "shared")
    quantize(student, tmp_path / "onnx", QuantizeConfig(method="onnx-fp32"))
    requests = [("turn on the kitchen light", CONTEXT), ("switch off the lamp in the hall", CONTEXT),
                ("lights on in the bedroom please", CONTEXT)]
    # Function-name constraint, stop at the newline, left-padded batch: the same answers.
    in_torch = DirectStudent(student).predict_batch(requests)
    in_onnx = DirectStudent(tmp_path / "onnx").predict_batch(requests)
    assert [p.raw for p in in_onnx] == [p.raw for p in in_torch]
    assert [p.call for p in in_onnx] == [p.call for p in in_torch]
    assert in_torch[0].call and in_torch[0].call["name"] == "switch"


def test_sampling_returns_every_sequence_and_follows_the_torch_seed(exported) -> None:
    model, tokenizer = load_onnx(exported["plain", "onnx-int8"])
    batch = _padded(tokenizer, TEXTS[:2], "left")
    options = dict(max_new_tokens=6, do_sample=True, temperature=1.5, num_return_sequences=3,
                   pad_token_id=tokenizer.pad_token_id)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.generate(**batch, **options))
    assert runs[0].shape == (6, batch["input_ids"].shape[1] + 6)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:3, :batch["input_ids"].shape[1]], batch["input_ids"][0].expand(3, -1))


def test_auto_measures_the_onnx_methods_beside_torch_ones(tiny_dirs, tmp_path: Path) -> None:
    config = QuantizeConfig(method="auto", max_drop=1.0, eval_texts=4, timing_prompts=1, new_tokens=3, threads=1)
    manifest = quantize(tiny_dirs["plain"], tmp_path / "auto", config, TEXTS)
    measured = manifest["measured"]
    assert {"onnx-int8", "onnx-int4"} <= set(measured) and "onnx-fp32" not in measured
    assert measured["onnx-int8"]["kernels"] == {"onnxruntime::MatMulNBits": 16}
    assert measured["onnx-int8"]["accuracy_drop"] <= 0.1 and measured["onnx-int8"]["decode_ms_per_token"] > 0
    assert not list(tmp_path.glob(".auto-candidates-*"))  # the exports not kept are gone
    model, _ = load_quantized(tmp_path / "auto")  # whichever won loads
    assert model is not None


def test_export_errors_are_one_line_and_write_nothing(tiny_dirs, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ONNX model here"):
        load_onnx(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["plain"], broken)
    (broken / "config.json").write_text('{"model_type": "llama", "architectures": ["NoSuchForCausalLM"]}')
    with pytest.raises(UserError, match=r"ONNX export \(onnx-int8\) failed") as error:
        export_onnx(broken, tmp_path / "out", "onnx-int8")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="unknown ONNX method"):
        export_onnx(tiny_dirs["plain"], tmp_path / "out2", "onnx-int3")


def test_a_quantized_dir_is_refused_where_float_weights_are_needed(exported, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from supertiny.cli import app

    onnx_dir = exported["plain", "onnx-int8"]
    db = str(tmp_path / "st.db")
    for args in (["compress", "prune", str(onnx_dir), "--out", str(tmp_path / "p")],
                 ["compress", "quantize", str(onnx_dir), "--out", str(tmp_path / "q"), "--method", "int8-weight"]):
        result = CliRunner().invoke(app, ["--db", db, *args])
        assert result.exit_code != 0
        message = str(result.exception) if result.exception else result.output
        assert "a quantized model (onnx-int8) has no float weights" in message and "\n" not in message.strip()
        assert str(read_manifest(onnx_dir)["parent"]) in message
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()
