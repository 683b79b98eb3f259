"""DPO: preference pairs built from a real store (teacher failures, the student's own mistakes),
training that moves the student towards the chosen answers, and the registered artifact."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from agent.run import TraceResult
from dataengine.curate import best_of_n, verify_traces
from dataengine.verify import SCORER
from student.distill import tokenize_example
from student.dpo import DPORunConfig, self_pairs, teacher_pairs, train_dpo
from student.format import direct_completion, direct_prompt, parse_call
from student.generate import DirectStudent
from student.manifest import read_manifest
from student.tiny import build_tiny_model
from supertiny.cli import app
from supertiny.errors import UserError
from supertiny.pipeline import train_and_register
from tests.conftest import store_planner_traces
from tests.student.tiny_student import CALLS, CONTEXT, EXAMPLES, call_tasks, sft_student
from tools.home.tasks import generate_tasks
from tools.registry import Task


def answer(store, task, call, sample_index):
    """Store one teacher sample of ``task`` that answered ``call`` (None: it never called an action)."""
    result = TraceResult(messages=[{"role": "user", "content": task.input}], final_call=call,
                         status="ok" if call else "no_call", error=None, latency_ms=1.0, prompt_tokens=10,
                         completion_tokens=5, model_calls=1)
    return store.add_trace(result, domain="home", model="planner", input=task.input, context=task.context,
                           task_id=task.id, sample_index=sample_index)


def wrong(call, suffix):
    """The call with its first string argument changed: the verifier fails it."""
    key = next(k for k, v in call["arguments"].items() if isinstance(v, str))
    return {"name": call["name"], "arguments": {**call["arguments"], key: call["arguments"][key] + suffix}}


@pytest.fixture
def preference_store(store):
    """Planner traces for five home tasks, plus failed samples with known answers: two distinct
    wrong answers (one of them twice) for the first passing task, a wrong answer and a no-call
    for the second, and a task with nothing but a wrong answer (so it is not in the dataset)."""
    tasks = generate_tasks(seed=0, n_train=5, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    store_planner_traces(store, tasks, samples=1, temperature=0.0)
    verify_traces(store, domain="home", split="train")
    passed = {trace.task_id for trace, value in store.scored_traces(domain="home", split="train", scorer=SCORER)
              if value == 1.0}
    first, second = [task for task in tasks if task.id in passed][:2]
    orphan = Task(id="orphan", domain="home", split="train", input="turn on the porch light", context=CONTEXT,
                  gold={"name": "control_device", "arguments": {"device_id": "light.porch", "action": "on"}})
    store.add_tasks([orphan])
    failed = {"a": answer(store, first, wrong(first.gold, " x"), 1),
              "b": answer(store, first, wrong(first.gold, " y"), 2),
              "a again": answer(store, first, wrong(first.gold, " x"), 3),
              "c": answer(store, second, wrong(second.gold, " z"), 1), "no call": answer(store, second, None, 2),
              "orphan": answer(store, orphan, wrong(orphan.gold, " w"), 0)}
    verify_traces(store, domain="home", split="train")
    dataset, _ = best_of_n(store, name="pref", domain="home", split="train")
    chosen = {trace.task_id: direct_completion(trace.final_call) for trace, _ in store.dataset_items(dataset.id)}
    return store, first, second, failed, chosen


def test_teacher_pairs_are_verified_vs_failed_samples_of_the_same_task(preference_store):
    store, first, second, failed, chosen = preference_store
    pairs = teacher_pairs(store, "pref")
    got = sorted((p["task_id"], p["rejected"], p["rejected_trace_id"]) for p in pairs)
    assert got == sorted([(first.id, direct_completion(wrong(first.gold, " x")), failed["a"]),
                          (first.id, direct_completion(wrong(first.gold, " y")), failed["b"]),
                          (second.id, direct_completion(wrong(second.gold, " z")), failed["c"])])
    for pair in pairs:
        assert pair["source"] == "teacher" and pair["chosen"] == chosen[pair["task_id"]]
        task = store.task(pair["task_id"])
        assert pair["prompt"] == direct_prompt(task.input, task.context)
    assert len(teacher_pairs(store, "pref", max_pairs_per_task=1)) == 2


def test_self_pairs_then_dpo_through_the_cli_registers_a_student(preference_store, tmp_path):
    store, _, _, _, chosen = preference_store
    examples = [{"prompt": direct_prompt(t.input, t.context), "completion": c}
                for t, c in ((store.task(task_id), c) for task_id, c in chosen.items())]
    base = build_tiny_model(tmp_path / "base", [e["prompt"] + e["completion"] for e in examples] * 4)
    sft = train_and_register(store, dataset_ref="pref", base=str(base), out=tmp_path / "sft", max_steps=20,
                             learning_rate=3e-3, bf16=False)

    pairs = self_pairs(store, "pref", sft.path, samples=2, seed=0)
    assert pairs and {p["source"] for p in pairs} == {"self"}
    greedy = DirectStudent(sft.path)
    domain = store.domain("home")
    for task_id, answer_text in chosen.items():
        task = store.task(task_id)
        raw = greedy.predict(task.input, task.context).raw
        right = domain.compare(parse_call(raw), task.gold)["exact"] if parse_call(raw) else False
        mine = [p for p in pairs if p["task_id"] == task_id]
        assert all(p["chosen"] == answer_text for p in mine)
        assert any(p["rejected"] == " " + raw for p in mine) == (bool(raw) and not right)
        for p in mine:  # every rejected answer is one the verifier fails
            call = parse_call(p["rejected"])
            assert call is None or not domain.compare(call, task.gold)["exact"]

    result = CliRunner().invoke(app, ["--db", str(store.path), "student", "dpo", "--model", sft.path, "--dataset",
                                      "pref", "--out", str(tmp_path / "dpo"), "--self-samples", "2", "--max-steps",
                                      "3", "--learning-rate", "1e-4", "--no-bf16", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]  # stdout is the JSON alone: training logs go to stderr
    manifest = read_manifest(tmp_path / "dpo")
    assert row["pairs"] == manifest["pairs"] == {"teacher": len(teacher_pairs(store, "pref")), "self": len(pairs)}
    assert row["kind"] == "student" and row["name"].endswith("-dpo") and row["parent_id"] == sft.id
    assert row["dataset_id"] == store.dataset("pref").id
    assert manifest["method"] == "dpo" and manifest["parent"] == str((tmp_path / "sft").resolve())
    assert manifest["lineage"]["dataset"]["name"] == "pref" and manifest["train_steps"] == 3
    assert json.loads((tmp_path / "dpo" / "dpo_config.json").read_text())["pairs"] == "both"


def test_self_pairs_leave_out_the_answers_the_verifier_accepts(store, tmp_path_factory):
    sft = sft_student(tmp_path_factory)  # answers the four calls right when greedy, not always when sampling
    tasks = call_tasks()
    store.add_tasks(tasks)
    for task in tasks:
        answer(store, task, task.gold, 0)
    verify_traces(store, domain="home", split="train")
    best_of_n(store, name="calls", domain="home", split="train")

    assert self_pairs(store, "calls", sft) == []  # every greedy answer is right
    sampled = self_pairs(store, "calls", sft, samples=6, temperature=1.5, seed=0)
    assert sampled, "six samples at temperature 1.5 should include a wrong answer"
    for pair in sampled:
        task = next(t for t in tasks if t.id == pair["task_id"])
        call = parse_call(pair["rejected"])
        assert call is None or not store.domain("home").compare(call, task.gold)["exact"]
        assert pair["chosen"] == direct_completion(task.gold)
        assert pair["rejected"] != pair["chosen"]


def sequence_logprob(model, tokenizer, prompt, completion):
    input_ids, prompt_len = tokenize_example(tokenizer, prompt, completion, 10**6)
    ids = torch.tensor([input_ids])
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    return float(logprobs[torch.arange(prompt_len - 1, len(input_ids) - 1), ids[0, prompt_len:]].sum())


def test_dpo_moves_the_student_towards_chosen_answers(tmp_path_factory, tmp_path):
    sft = sft_student(tmp_path_factory)
    pairs = [{"prompt": ex["prompt"], "chosen": ex["completion"], "rejected": direct_completion(wrong(call, "s"))}
             for ex, (_, call) in zip(EXAMPLES, CALLS)]
    config = DPORunConfig(model=str(sft), output_dir=str(tmp_path / "dpo"), learning_rate=1e-3, max_steps=24,
                          per_device_train_batch_size=4, warmup_ratio=0.0, logging_steps=2)
    out = train_dpo(pairs, config)

    manifest = read_manifest(out)
    losses = [entry["loss"] for entry in manifest["loss_history"]]
    assert abs(losses[0] - 0.6931) < 1e-3  # log 2: the policy starts as its own reference
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert manifest["pairs"] == {"given": len(pairs)} and manifest["parent"] == str(sft.resolve())

    tokenizer = AutoTokenizer.from_pretrained(sft)
    before, after = AutoModelForCausalLM.from_pretrained(sft), AutoModelForCausalLM.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))

    def margin(model, pair):
        return (sequence_logprob(model, tokenizer, pair["prompt"], pair["chosen"])
                - sequence_logprob(model, tokenizer, pair["prompt"], pair["rejected"]))

    assert all(margin(after, pair) > margin(before, pair) for pair in pairs)


def test_no_pairs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no preference pairs"):
        train_dpo([], DPORunConfig(model=str(tmp_path), output_dir=str(tmp_path / "out")))
