"""Agent-mode students: the teacher's verified conversations rendered by the ``local:`` backend's
own renderer, loss on the assistant turns only, format recorded for ``local:`` and ``eval``.
The data is real: planner traces in a SQLite store, verified, best-of-N (tests/tiny_agents.py)."""
import json
import sqlite3

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent.local import DEFAULT_CHAT_TEMPLATE, render_prompt
from dataengine.export import chat_records
from student.manifest import read_manifest
from student.train import SFTRunConfig
from student.train_agent import tokenize_conversation, train_agent_student
from supertiny.errors import UserError
from tests.tiny_agents import agent_student, lights_store, run_cli


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "shared"


@pytest.fixture(scope="module")
def student(root):
    return agent_student(root)


@pytest.fixture(scope="module")
def records(root):
    return chat_records(lights_store(root), "lights")


def cli(root, *args):
    return run_cli("--db", str(root / "lights.db"), *args)


def assistant_loss(model_dir, records) -> float:
    """Mean cross-entropy of the assistant tokens, as training measures it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses = []
    with torch.inference_mode():
        for record in records:
            example = tokenize_conversation(tokenizer, record["messages"], record["tools"], "text")
            ids = torch.tensor([example["input_ids"]])
            labels = ids.masked_fill(torch.tensor([example["completion_mask"]]) == 0, -100)
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def test_the_loss_mask_covers_the_assistant_turns_and_inference_prompts_are_prefixes(student, records):
    tokenizer = AutoTokenizer.from_pretrained(student)
    record = records[0]
    example = tokenize_conversation(tokenizer, record["messages"], record["tools"], "text")
    mask, ids = example["completion_mask"], example["input_ids"]
    learned = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assistant = [m for m in record["messages"] if m["role"] == "assistant"]
    assert learned.count("<tool_call>") == sum(len(m["tool_calls"]) for m in assistant) == 2
    assert learned.count(tokenizer.eos_token) == len(assistant)  # each turn ends with EOS, learned
    assert "<tool_response" not in learned and "Request:" not in learned and "# Tools" not in learned
    # Every assistant turn starts right where the inference prompt of the messages before it ends.
    starts = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    turns = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    for start, index in zip(starts, turns, strict=True):
        prompt_ids = tokenizer(render_prompt(tokenizer, record["messages"][:index], record["tools"], "text"),
                               add_special_tokens=False)["input_ids"]
        assert ids[:start] == prompt_ids


def test_agent_student_records_its_format_lineage_and_template(student, root):
    manifest = read_manifest(student)
    assert manifest["kind"] == "student" and manifest["format"] == "agent" and manifest["tool_protocol"] == "text"
    assert manifest["dataset"]["name"] == "lights" and manifest["dataset"]["version"] == 1
    assert manifest["lineage"]["function_names"] == ["switch"]
    assert manifest["train_examples"] == 3 and manifest["skipped_too_long"] == 0 and manifest["train_steps"] == 150
    assert manifest["config"]["max_length"] == 1024
    # The template it was trained with travels with it.
    assert AutoTokenizer.from_pretrained(student).chat_template == DEFAULT_CHAT_TEMPLATE
    model = lights_store(root).model_by_path(str(student.resolve()))
    assert model is not None and model.kind == "student" and model.dataset_id == manifest["dataset"]["id"]


def test_training_lowers_the_assistant_loss(student, root, records):
    assert assistant_loss(student, records) < 0.5 * assistant_loss(root / "agent-base", records)


def test_conversations_over_max_length_are_left_out(root, records, tmp_path):
    config = SFTRunConfig(base_model=str(root / "agent-base"), output_dir=str(tmp_path / "out"), max_length=64)
    with pytest.raises(UserError, match="longer than max_length=64"):
        train_agent_student(records, config)


@pytest.mark.parametrize("bad,match", [
    ([], "no training conversations"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "record 0 needs 'messages'"),
])
def test_bad_records_are_user_errors(root, tmp_path, bad, match):
    config = SFTRunConfig(base_model=str(root / "agent-base"), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match=match):
        train_agent_student(bad, config)


def test_cli_trains_an_agent_student_and_eval_runs_it_in_the_graph(student, root, tmp_path):
    out = tmp_path / "cli-student"
    proc = cli(root, "student", "train", "--dataset", "lights", "--format", "agent", "--base", str(root / "agent-base"),
               "--out", str(out), "--max-steps", "2", "--batch-size", "1", "--max-length", "1024", "--json")
    assert proc.returncode == 0, proc.stderr
    row, = json.loads(proc.stdout)
    assert row["kind"] == "student" and row["path"] == str(out.resolve())
    assert read_manifest(out)["format"] == "agent" and read_manifest(out)["train_steps"] == 2

    proc = cli(root, "eval", "--domain", "lights", "--teacher", "", "--model", f"agent={student}", "--json")
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads(proc.stdout) if r["slice"] == "all")
    # Through the graph: a lookup then the action per request, each with the tool-listing prompt.
    assert row["model_label"] == "agent" and row["n"] == 3 and row["calls_per_request"] == 2
    assert row["tokens_per_request"] > 400
    assert row["name_accuracy"] == 1.0
    with sqlite3.connect(root / "lights.db") as conn:
        stored = conn.execute("select prediction, model_calls from predictions where evaluation_run = ?",
                              (row["run_id"],)).fetchall()
    assert len(stored) == 3 and all(json.loads(p)["name"] == "switch" and calls == 2 for p, calls in stored)


@pytest.mark.parametrize("args,message", [
    (["--format", "chat"], "--format must be"),
    (["--max-length", "512"], "--max-length applies to --format agent only"),
])
def test_cli_rejects_bad_format_options(root, tmp_path, args, message):
    proc = cli(root, "student", "train", "--dataset", "lights", "--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 1 and message in proc.stderr
