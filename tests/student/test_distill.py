"""Logit distillation: the divergences, vocabulary checks, KD from a local teacher and from
top-k logprobs stored with traces, and healing a pruned student through the CLI."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from agent.run import TraceResult
from dataengine.curate import best_of_n, verify_traces
from student.distill import (DistillRunConfig, completion_loss, distill_student, kd_loss, stored_targets,
                             token_ids_by_text, tokenize_example)
from student.manifest import read_manifest
from student.tiny import build_tiny_model
from supertiny.cli import app
from supertiny.errors import UserError
from supertiny.pipeline import distill_and_register
from tests.student.tiny_student import CALLS, EXAMPLES, call_tasks, sft_student, tiny_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return sft_student(tmp_path_factory)


def weights(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def assert_trained(history, start_dir, out_dir):
    losses = [entry["loss"] for entry in history]
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < 0.5 * sum(losses[:2]) / 2, losses  # it learned, not just wobbled
    before, after = weights(start_dir), weights(out_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ---- the divergences ----------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd"])
def test_divergences_are_zero_for_identical_distributions_and_positive_otherwise(loss):
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    assert torch.allclose(kd_loss(logits, logits.clone(), loss), torch.zeros(5), atol=1e-6)
    # a constant shift is the same distribution (log-probabilities work as logits)
    assert torch.allclose(kd_loss(logits, logits.log_softmax(-1), loss, temperature=2.0), torch.zeros(5), atol=1e-5)
    other = kd_loss(logits, torch.randn(5, 50), loss, temperature=2.0)
    assert other.shape == (5,) and bool((other > 1e-3).all())


def test_divergences_have_their_textbook_values_and_masked_entries_count_as_zero_probability():
    p, q = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.5, 0.25, 0.25]])
    forward, reverse = (p * (p / q).log()).sum(), (q * (q / p).log()).sum()
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    for loss, expected in (("fkl", forward), ("rkl", reverse), ("jsd", jsd)):
        assert torch.allclose(kd_loss(q.log(), p.log(), loss), expected.reshape(1), atol=1e-6)
    # A padded fourth entry (mask False) changes nothing, and the gradient stays finite.
    student = torch.cat([q.log(), torch.tensor([[3.0]])], dim=1).requires_grad_()
    mask = torch.tensor([[True, True, True, False]])
    value = kd_loss(student, torch.cat([p.log(), torch.tensor([[0.0]])], dim=1), "jsd", mask=mask)
    assert torch.allclose(value, jsd.reshape(1), atol=1e-6)
    value.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 3] == 0


# ---- a local teacher -------------------------------------------------------------------------------


def test_kd_from_a_local_teacher_trains_a_smaller_student(tmp_path, teacher):
    # JSD on the teacher's top 8 tokens here; the heal test below runs forward KL on the whole vocabulary.
    small = tiny_model(tmp_path / "small", num_layers=2, seed=1)
    config = DistillRunConfig(model=str(small), teacher=str(teacher), output_dir=str(tmp_path / "kd"), loss="jsd",
                              top_k=8, learning_rate=3e-3, max_steps=60, warmup_ratio=0.0, logging_steps=10)
    out = distill_student(EXAMPLES * 4, config, lineage={"dataset": {"name": "calls", "version": 1}})

    manifest = read_manifest(out)
    assert manifest["method"] == "distill" and manifest["teacher"] == str(teacher.resolve())
    assert manifest["parent"] == str(small.resolve()) and manifest["config"] == config.model_dump()
    assert [e["step"] for e in manifest["loss_history"]] == [1, 10, 20, 30, 40, 50, 60]
    assert all(e["kd"] is not None and e["kd"] >= 0 for e in manifest["loss_history"])
    assert_trained(manifest["loss_history"], small, out)
    assert completion_loss(out, EXAMPLES) < completion_loss(small, EXAMPLES) / 2


def test_a_teacher_with_another_vocabulary_is_refused_up_front(tmp_path, teacher):
    stranger = build_tiny_model(tmp_path / "stranger", ["completely different words, another tokenizer"] * 5)
    config = DistillRunConfig(model=str(stranger), teacher=str(teacher), output_dir=str(tmp_path / "kd"), max_steps=1)
    with pytest.raises(UserError) as error:
        distill_student(EXAMPLES, config)
    message = str(error.value)
    assert "\n" not in message and str(stranger) in message and str(teacher) in message
    assert "different" in message and not (tmp_path / "kd" / "config.json").exists()


# ---- top-k logprobs stored with traces ------------------------------------------------------------


def teacher_logprobs(teacher_dir, prompt, completion, k=4):
    """What an endpoint serving ``teacher_dir`` returns with top_logprobs=k for this completion,
    compact as ``model_calls.logprobs`` stores it (token strings, not ids)."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    input_ids, prompt_len = tokenize_example(tokenizer, prompt, completion, 10**6)
    input_ids = input_ids[:-1]  # endpoints report the generated text, not the stop token
    with torch.inference_mode():
        logprobs = model(input_ids=torch.tensor([input_ids])).logits[0].log_softmax(-1)
    text = lambda i: tokenizer.decode([i], clean_up_tokenization_spaces=False)  # noqa: E731
    entries = []
    for position in range(prompt_len, len(input_ids)):
        row = logprobs[position - 1]
        top = row.topk(k)
        token = input_ids[position]
        entries.append([text(token), round(float(row[token]), 5),
                         [[text(int(i)), round(float(v), 5)] for v, i in zip(top.values, top.indices)]])
    return entries


def store_call_traces(store, teacher_dir, logprobs_for=lambda i: True):
    """The four calls as tasks, each answered by one trace whose model call carries the teacher's
    top-4 logprobs; verified and built into dataset 'calls@1'."""
    store.add_tasks(call_tasks("train") + call_tasks("dev", prefix="dev"))
    for i, (task, example) in enumerate(zip(call_tasks("train"), EXAMPLES)):
        logprobs = teacher_logprobs(teacher_dir, example["prompt"], example["completion"]) if logprobs_for(i) else None
        result = TraceResult(messages=[{"role": "user", "content": task.input}], final_call=task.gold, status="ok",
                             error=None, latency_ms=1.0, prompt_tokens=20, completion_tokens=10, model_calls=1,
                             model_events=[{"prompt_tokens": 20, "completion_tokens": 10, "latency_ms": 1.0,
                                            "finish_reason": "tool_calls", "model": "teacher-endpoint",
                                            "logprobs": logprobs}])
        store.add_trace(result, domain="home", model="openai:teacher", input=task.input, context=task.context,
                        task_id=task.id)
    verify_traces(store, domain="home", split="train")
    best_of_n(store, name="calls", domain="home", split="train")


def test_kd_from_stored_topk_logprobs(store, tmp_path, teacher):
    store_call_traces(store, teacher, logprobs_for=lambda i: i != 3)  # one trace without logprobs: CE only
    stored = store.model_calls_of(1)[0].logprobs
    assert stored and len(stored[0][2]) == 4  # written to and read back from SQLite

    small = tiny_model(tmp_path / "small", num_layers=2, seed=1)
    result = CliRunner().invoke(app, ["--db", str(store.path), "student", "distill", "--model", str(small), "--dataset",
                                      "calls", "--out", str(tmp_path / "kd"), "--alpha", "0.9", "--learning-rate",
                                      "3e-3", "--max-steps", "60", "--batch-size", "4", "--no-bf16", "--json"])
    assert result.exit_code == 0, result.output
    row = store.model_by_id(json.loads(result.stdout)[0]["id"])

    manifest = read_manifest(row.path)
    assert manifest["teacher"] == "stored logprobs" and manifest["examples_with_teacher_logprobs"] == 3
    tokenizer = AutoTokenizer.from_pretrained(small)
    tokenized = [tokenize_example(tokenizer, ex["prompt"], ex["completion"], 10**6) for ex in EXAMPLES[:3]]
    # every completion token but the EOS (which endpoints do not report) has its teacher distribution
    assert manifest["kd_positions"] == sum(len(ids) - prompt_len - 1 for ids, prompt_len in tokenized)
    assert manifest["lineage"]["dataset"]["name"] == "calls" and manifest["lineage"]["format"] == "direct"
    assert_trained(manifest["loss_history"], small, row.path)
    assert completion_loss(row.path, EXAMPLES[:3]) < completion_loss(small, EXAMPLES[:3]) / 2
    assert row.kind == "student" and row.dataset_id == store.dataset("calls").id
    assert store.model_by_id(row.parent_id).path == str(small.resolve())


def test_stored_logprobs_with_tokens_the_student_lacks_are_refused(store, tmp_path, teacher):
    store_call_traces(store, teacher)
    with store.session() as session:  # an endpoint with another tokenizer: its token strings are foreign
        from dataengine.schema import ModelCallRow
        call = session.get(ModelCallRow, 1)
        call.logprobs = [[token, lp, [[alt, lp - 1.0], ["<alt1>", lp - 2.0]]]
                         for token, lp, ((alt, _), *_) in call.logprobs]
        session.add(call)
        session.commit()
    small = tiny_model(tmp_path / "small", num_layers=2, seed=1)
    with pytest.raises(UserError, match=r"trace 1 \(teacher openai:teacher\): 1 token strings .* '<alt1>'") as error:
        distill_and_register(store, dataset_ref="calls", model_dir=small, out=tmp_path / "kd", max_steps=1)
    assert str(small) in str(error.value) and "\n" not in str(error.value)


def test_a_tool_call_in_json_lines_up_with_the_direct_completion_where_the_tokens_agree(teacher):
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    ids_by_text = token_ids_by_text(tokenizer)
    text = lambda ids: [tokenizer.decode([i]) for i in ids]  # noqa: E731
    teacher_tokens = text(tokenizer('{"name": "get_weather", "arguments": {"city": "Paris"}}')["input_ids"])
    assert "kitchen" in ids_by_text
    logprobs = [[token, -0.1, [[token, -0.1], ["kitchen", -2.5]]] for token in teacher_tokens]
    completion = text(tokenizer(' get_weather(city="Paris")')["input_ids"])
    targets = stored_targets(logprobs, completion, ids_by_text, where="trace 7", student="tiny")
    aligned = {completion[position] for position, _, _ in targets}
    assert {"city", "Paris"} <= aligned <= set(teacher_tokens)
    assert all(ids[0] == ids_by_text[completion[position]] for position, ids, _ in targets)
    assert len(targets) < len(completion)  # the JSON punctuation has no direct-mode counterpart


# ---- healing a pruned student by distillation, through the CLI ----------------------------------------


def test_compress_heal_with_a_teacher_distils_and_reports_before_and_after(store, tmp_path, teacher):
    store_call_traces(store, teacher)
    runner = CliRunner()
    db = ["--db", str(store.path)]
    pruned = tmp_path / "pruned"
    result = runner.invoke(app, [*db, "compress", "prune", str(teacher), "--out", str(pruned), "--ratio", "0.8",
                                 "--calibration-dataset", "calls"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*db, "compress", "heal", str(pruned), "--dataset", "calls", "--out",
                                 str(tmp_path / "healed"), "--teacher", str(teacher), "--max-steps", "40",
                                 "--learning-rate", "3e-3", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout[result.stdout.index("["):])[0]
    assert row["kind"] == "healed" and row["name"].endswith("-healed")
    before, after = row["before"], row["after"]
    assert before["exact_match_tasks"] == after["exact_match_tasks"] == len(CALLS)  # the dev tasks
    assert after["completion_loss"] < before["completion_loss"]
    assert after["exact_match"] >= before["exact_match"]
    manifest = read_manifest(tmp_path / "healed")
    assert manifest["before"] == before and manifest["after"] == after
    assert manifest["teacher"] == str(teacher.resolve()) and manifest["parent"] == str(pruned.resolve())
    parent = store.model_by_id(row["parent_id"])
    assert parent.kind == "pruned" and parent.path == str(pruned.resolve())

    # The pruned and healed models side by side, on the prompts of the dataset they serve.
    result = runner.invoke(app, [*db, "compress", "bench", str(pruned), str(tmp_path / "healed"), "--dataset", "calls",
                                 "--new-tokens", "2", "--prompts", "1", "--repeats", "1", "--batch-size", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert [Path(r["model"]).name for r in json.loads(result.stdout)] == ["pruned", "healed"]
    result = runner.invoke(app, [*db, "compress", "bench", str(pruned), "--dataset", "nope"])
    assert result.exit_code != 0 and "unknown dataset 'nope'" in str(result.exception)

    # Without --teacher, heal is still the plain SFT fine-tune.
    result = runner.invoke(app, [*db, "compress", "heal", str(pruned), "--dataset", "calls", "--out",
                                 str(tmp_path / "healed-sft"), "--max-steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert "method" not in read_manifest(tmp_path / "healed-sft")


# ---- quantization-aware healing ------------------------------------------------------------------


def int4_divergence(model_dir, teacher_dir):
    """Forward KL from the teacher to ``model_dir`` made int4-weight, over the completion tokens of EXAMPLES."""
    from compress.quantize import quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    quantize_model(model, "int4-weight")
    reference = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    total = []
    with torch.inference_mode():
        for example in EXAMPLES:
            ids, prompt_len = tokenize_example(tokenizer, example["prompt"], example["completion"], 128)
            ids = torch.tensor([ids])
            got, want = model(ids).logits[0, prompt_len - 1:-1], reference(ids).logits[0, prompt_len - 1:-1]
            total.append(kd_loss(got, want, "fkl").mean())
    return torch.stack(total).mean().item()


def int4_hostile_copy(model_dir, out_dir, factor=16.0):
    """The same function with int4-hostile weights: input channel 0 of every q/k/v/gate/up
    weight times ``factor``, the RMSNorm weight before it divided by ``factor``. Each group of 32
    inputs holding channel 0 then gets a coarse int4 grid (real LLMs have such outlier weights)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, linears in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                           layer.self_attn.v_proj)),
                                  (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
                norm.weight[0] /= factor
                for linear in linears:
                    linear.weight[:, 0] *= factor
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def test_a_quantization_aware_heal_trains_the_int4_model_toward_its_teacher(tmp_path, teacher):
    # The student computes what the teacher does (plain KD has nothing to learn), but its int4
    # copy is far off. Quantization-aware KD trains what the int4 model computes.
    student = int4_hostile_copy(teacher, tmp_path / "hostile")
    start = int4_divergence(student, teacher)
    assert start > 5 * int4_divergence(teacher, teacher)
    runs = {}
    for quant_aware in ("int4-weight", None):
        config = DistillRunConfig(model=str(student), teacher=str(teacher), output_dir=str(tmp_path / str(quant_aware)),
                                  quant_aware=quant_aware, alpha=1.0, learning_rate=3e-4, max_steps=30,
                                  warmup_ratio=0.0, logging_steps=5)
        runs[quant_aware] = distill_student(EXAMPLES * 4, config, lineage={"dataset": {"name": "calls", "version": 1}})
    out = runs["int4-weight"]
    history = read_manifest(out)["loss_history"]
    assert history[0]["kd"] > 0.5 * start  # the first step already computes with the int4 weights
    assert history[-1]["kd"] < 0.5 * history[0]["kd"], history
    assert weights(out).keys() == weights(teacher).keys()  # a plain model dir: no parametrizations saved
    assert read_manifest(out)["config"]["quant_aware"] == "int4-weight"
    # What `compress quantize --method int4-weight` makes of it: much closer to the teacher, and
    # closer than the same steps of plain KD get.
    healed = int4_divergence(out, teacher)
    assert healed < 0.5 * start and healed < 0.5 * int4_divergence(runs[None], teacher)


def test_quant_aware_heal_needs_a_teacher_and_a_kernel_group_size(store, tmp_path, teacher):
    result = CliRunner().invoke(app, ["--db", str(store.path), "compress", "heal", str(teacher), "--dataset", "calls",
                                      "--out", str(tmp_path / "h"), "--quant-aware", "int4-weight"])
    assert result.exit_code != 0 and "--quant-aware heals by distillation" in str(result.exception)
    with pytest.raises(ValueError, match="quant_group_size must be 32, 64, 128 or 256"):
        DistillRunConfig(model="m", output_dir="o", quant_aware="int4-weight", quant_group_size=48)
    assert not (tmp_path / "h").exists()
