"""DPO, GRPO and logit distillation of a program-mode student (student/program.py): pairs and
rewards in the student's own format, judged by running the plans with the domain's tools, on a
real store of planner traces and tiny models."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dataengine.curate import best_of_n, verify_traces
from student.dpo import self_pairs, teacher_pairs
from student.grpo import answer_reward
from student.manifest import read_manifest
from student.program import completion_call, parse_program
from student.tiny import build_tiny_model
from supertiny.errors import UserError
from supertiny.pipeline import (
    distill_and_register, dpo_and_register, grpo_and_register, student_examples, train_and_register,
)
from tests.conftest import store_planner_traces
from tools.home.tasks import generate_tasks


@pytest.fixture(scope="module")
def program_store(tmp_path_factory):
    """A store with planner traces (three samples at temperature 1.0: some fail) for 30 tasks, a
    best-of-N dataset, and a tiny program-mode SFT student trained on it."""
    from dataengine.store import Store

    root = tmp_path_factory.mktemp("program-training")
    store = Store(root / "test.db")
    tasks = generate_tasks(seed=2, n_train=30, n_dev=6, n_test=0)
    store.add_tasks(tasks)
    store_planner_traces(store, [t for t in tasks if t.split == "train"], samples=3, temperature=1.0)
    verify_traces(store, domain="home", split="train")
    best_of_n(store, name="plans", domain="home", split="train")
    examples = student_examples(store, "plans", "program")
    base = build_tiny_model(root / "base", [e["prompt"] + e["completion"] for e in examples] * 4)
    sft = train_and_register(store, dataset_ref="plans", base=str(base), out=root / "sft", max_steps=40,
                             learning_rate=3e-3, bf16=False, format="program")
    return store, root, sft


def test_teacher_pairs_of_a_program_student_are_plans_whose_runs_are_right_and_wrong(program_store):
    store, _, _ = program_store
    pairs = teacher_pairs(store, "plans", format="program")
    assert pairs, "temperature 1.0 planner samples fail some tasks"
    domain = store.domain("home")
    for pair in pairs:
        task = store.task(pair["task_id"])
        chosen = completion_call(pair["chosen"], "program", domain, task.context)
        assert domain.compare(chosen, task.gold)["exact"]  # the chosen plan runs to the gold call
        rejected = completion_call(pair["rejected"], "program", domain, task.context)
        assert rejected is None or not domain.compare(rejected, task.gold)["exact"]
        assert ";" in pair["chosen"] or "(" in pair["chosen"]


def test_self_pairs_reject_the_plans_that_run_to_a_wrong_call(program_store):
    store, _, sft = program_store
    domain = store.domain("home")
    pairs = self_pairs(store, "plans", sft.path, samples=2, seed=0, format="program")
    assert pairs
    for pair in pairs:
        task = store.task(pair["task_id"])
        call = completion_call(pair["rejected"], "program", domain, task.context)
        assert call is None or not domain.compare(call, task.gold)["exact"]


def test_dpo_of_a_program_student_trains_and_keeps_its_format(program_store):
    store, root, sft = program_store
    row = dpo_and_register(store, dataset_ref="plans", model_dir=sft.path, out=root / "dpo", pairs="teacher",
                           max_steps=3, learning_rate=1e-3, bf16=False)
    manifest = read_manifest(row.path)
    assert manifest["lineage"]["format"] == "program" and manifest["train_steps"] == 3
    assert manifest["pairs"]["teacher"] == len(teacher_pairs(store, "plans", format="program"))
    assert row.parent_id == sft.id
    before, after = (AutoModelForCausalLM.from_pretrained(p) for p in (sft.path, row.path))
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_a_plan_is_rewarded_by_the_call_it_runs_to():
    domain = __import__("tools.registry", fromlist=["get_domain"]).get_domain("home")
    context = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
    gold = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}
    right = ' find_device(room="kitchen", device_type="lights"); control_device(device_id=$1[0].device_id, action="off")'
    half = ' find_device(room="kitchen", device_type="lights"); control_device(device_id=$1[0].device_id, action="on")'
    assert answer_reward(right, gold, domain.compare, format="program", domain=domain, context=context) == 1.0
    assert 0.0 < answer_reward(half, gold, domain.compare, format="program", domain=domain, context=context) < 1.0
    assert answer_reward(' find_device(room="moon", device_type="lights"); control_device(device_id=$1[0].device_id, '
                         'action="off")', gold, domain.compare, format="program", domain=domain, context=context) == 0.0


def test_grpo_of_a_program_student_runs_its_sampled_plans(program_store):
    store, root, sft = program_store
    row = grpo_and_register(store, model_dir=sft.path, out=root / "grpo", limit=4, max_steps=2,
                            num_generations=4, prompts_per_step=2, learning_rate=1e-4, bf16=False)
    manifest = read_manifest(row.path)
    assert manifest["lineage"]["format"] == "program" and manifest["train_steps"] == 2
    assert manifest["config"]["max_completion_length"] == 128  # a plan is longer than a direct call
    assert all(entry["reward"] is not None for entry in manifest["loss_history"])


def test_kd_of_a_program_student_needs_a_local_teacher(program_store):
    store, root, sft = program_store
    with pytest.raises(UserError, match="program-mode student learns from a local teacher"):
        distill_and_register(store, dataset_ref="plans", model_dir=sft.path, out=root / "kd-none")
    row = distill_and_register(store, dataset_ref="plans", model_dir=sft.path, teacher=sft.path, out=root / "kd",
                               max_steps=3, learning_rate=1e-3, bf16=False, measure=True)
    manifest = read_manifest(row.path)
    assert manifest["lineage"]["format"] == "program"
    assert manifest["before"]["exact_match_tasks"] == 6  # measured on the dev tasks by running the plans
    # A base model without a format learns its teacher's.
    base = root / "base"
    row = distill_and_register(store, dataset_ref="plans", model_dir=base, teacher=sft.path, out=root / "kd-base",
                               max_steps=2, learning_rate=1e-3, bf16=False)
    lineage = read_manifest(row.path)["lineage"]
    assert lineage["format"] == "program"
    assert set(lineage["function_names"]) == set(read_manifest(sft.path)["lineage"]["function_names"]) >= \
        {"find_device", "search_music", "control_device", "play_music"}  # a plan starts with a lookup


def test_student_train_json_is_the_registered_model_alone(program_store):
    import json

    from typer.testing import CliRunner

    from supertiny.cli import app

    store, root, _ = program_store
    result = CliRunner().invoke(app, ["--db", str(store.path), "student", "train", "--dataset", "plans", "--base",
                                      str(root / "base"), "--out", str(root / "cli-sft"), "--format", "program",
                                      "--max-steps", "2", "--no-bf16", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]  # the trainer's log lines went to stderr
    assert row["path"] == str((root / "cli-sft").resolve()) and row["kind"] == "student"


def test_name_swaps_train_on_the_verified_plans_plus_copies_with_made_up_names(program_store, tmp_path):
    store, root, _ = program_store
    examples = student_examples(store, "plans", "program")
    # a base whose tokenizer knows whole words that no request uses: the material for made-up names
    extra = [a + b + c for a in "bdfgkmprtvz" for b in "aeiou" for c in "bdgkmnprstx"][:150]
    base = build_tiny_model(tmp_path / "base", [e["prompt"] + e["completion"] for e in examples] * 4
                            + ["a " + " ".join(extra)] * 20, vocab_size=1536)
    row = train_and_register(store, dataset_ref="plans", base=str(base), out=tmp_path / "swapped", max_steps=4,
                             learning_rate=3e-3, bf16=False, format="program", name_swaps=2)
    manifest = read_manifest(row.path)
    swaps = manifest["lineage"]["name_swaps"]
    assert swaps["copies"] == 2 and swaps["examples"] == len(examples)
    domain = store.domain("home")
    copying = [e for e in examples
               if any(key in domain.copied_names.get(name, ()) and value.lower() in e["prompt"].lower()
                      for name, args in parse_program(e["completion"])[:-1] for key, value in args.items())]
    assert copying and swaps["made_up"] == 2 * len(copying)  # two copies of each plan that copies a name
    assert manifest["train_examples"] == len(examples) + swaps["made_up"]


def test_name_swaps_need_the_program_format(program_store, tmp_path):
    store, root, _ = program_store
    with pytest.raises(UserError, match="--name-swaps 1: only for --format program"):
        train_and_register(store, dataset_ref="plans", base=str(root / "base"), out=tmp_path / "x", max_steps=1,
                           bf16=False, format="direct", name_swaps=1)
