"""GRPO: the verifier reward with partial credit, and on-policy training through the CLI that
moves an undecided student towards the answers the verifier rewards."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from dataengine.verify import compare_calls
from student.distill import tokenize_example
from student.format import direct_completion, direct_prompt
from student.grpo import answer_reward, verifier_reward
from student.manifest import read_manifest
from student.train import SFTRunConfig, train_student
from supertiny.cli import app
from tests.student.tiny_student import CALLS, CONTEXT, tiny_model
from tools.registry import Task

LIGHTS, TIMER = CALLS[0], CALLS[3]
LIGHTS_WRONG = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "on"}}
TIMER_WRONG = {"name": "set_timer", "arguments": {"duration": "PT20M"}}


def test_reward_is_one_when_exact_partial_credit_otherwise_zero_for_a_non_call():
    gold = LIGHTS[1]
    assert answer_reward(' control_device(device_id="light.kitchen", action="off")', gold, compare_calls) == 1.0
    assert answer_reward(' control_device(device_id="Light.Kitchen", action="off")', gold, compare_calls) == 1.0
    # right name, one of two arguments right: 0.3 + 0.7 * F1(1/2, 1/2)
    half_right = answer_reward(' control_device(device_id="light.kitchen", action="on")', gold, compare_calls)
    assert half_right == pytest.approx(0.65)
    name_only = answer_reward(' control_device(device_id="light.hall", action="on")', gold, compare_calls)
    assert name_only == pytest.approx(0.3)
    assert answer_reward(' get_weather(city="Paris")', gold, compare_calls) == 0.0
    assert answer_reward(' control_device(device_id="light.kitchen', gold, compare_calls) == 0.0  # unterminated
    assert answer_reward("lights off please", gold, compare_calls) == 0.0
    reward = verifier_reward(compare_calls, name_credit=0.5)
    assert reward(prompts=["p", "p"], completions=[' control_device(device_id="light.kitchen", action="on")', "x"],
                  gold=[json.dumps(gold)] * 2, trainer_state=None) == [pytest.approx(0.75), 0.0]


def logprob(model, tokenizer, text, call):
    input_ids, prompt_len = tokenize_example(tokenizer, direct_prompt(text, CONTEXT), direct_completion(call), 10**6)
    ids = torch.tensor([input_ids])
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    return float(logprobs[torch.arange(prompt_len - 1, len(input_ids) - 1), ids[0, prompt_len:]].sum())


@pytest.fixture(scope="module")
def undecided_student(tmp_path_factory):
    """An SFT student trained on two requests whose data says two things half the time each (one
    right, one wrong): it samples both answers, and only the verifier's reward can tell them apart."""
    root = tmp_path_factory.mktemp("undecided")
    examples = [{"prompt": direct_prompt(text, CONTEXT), "completion": direct_completion(call)}
                for text, calls in ((LIGHTS[0], (LIGHTS[1], LIGHTS_WRONG)), (TIMER[0], (TIMER[1], TIMER_WRONG)))
                for call in calls]
    config = SFTRunConfig(base_model=str(tiny_model(root / "base")), output_dir=str(root / "sft"),
                          learning_rate=3e-3, max_steps=120, warmup_ratio=0.0, logging_steps=60)
    return train_student(examples * 10, config)


def test_grpo_through_the_cli_rewards_the_verified_answer(store, tmp_path, undecided_student):
    store.add_tasks([Task(id=f"t{i}", domain="home", split="train", input=text, context=CONTEXT, gold=call)
                     for i, (text, call) in enumerate((LIGHTS, TIMER))])
    out = tmp_path / "grpo"
    result = CliRunner().invoke(app, [
        "--db", str(store.path), "student", "grpo", "--model", str(undecided_student), "--split", "train",
        "--out", str(out), "--max-steps", "20", "--num-generations", "8", "--prompts-per-step", "2",
        "--max-completion-length", "24", "--temperature", "0.7", "--learning-rate", "1e-3", "--no-bf16", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]

    manifest = read_manifest(out)
    rewards = [entry["reward"] for entry in manifest["loss_history"]]
    assert [entry["step"] for entry in manifest["loss_history"]] == [1, 5, 10, 15, 20]
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.1, rewards  # the policy earns more reward as it trains
    assert row["first_mean_reward"] == rewards[0] and row["final_mean_reward"] == rewards[-1]
    assert manifest["method"] == "grpo" and manifest["train_prompts"] == 2 and manifest["train_steps"] == 20
    assert manifest["lineage"]["split"] == "train" and manifest["lineage"]["format"] == "direct"
    assert row["kind"] == "student" and row["name"].endswith("-grpo")
    assert store.model_by_id(row["parent_id"]).path == str(undecided_student.resolve())

    # The probability moved from the wrong answer to the verified one, for both requests.
    tokenizer = AutoTokenizer.from_pretrained(out)
    before, after = AutoModelForCausalLM.from_pretrained(undecided_student), AutoModelForCausalLM.from_pretrained(out)
    for (text, right), wrong in ((LIGHTS, LIGHTS_WRONG), (TIMER, TIMER_WRONG)):
        margin_before = logprob(before, tokenizer, text, right) - logprob(before, tokenizer, text, wrong)
        margin_after = logprob(after, tokenizer, text, right) - logprob(after, tokenizer, text, wrong)
        assert margin_after > margin_before + 1.0, (text, margin_before, margin_after)


def test_grpo_without_tasks_with_gold_is_a_user_error(store, tmp_path):
    result = CliRunner().invoke(app, ["--db", str(store.path), "student", "grpo", "--model", str(tmp_path),
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "no train tasks with gold" in str(result.exception)
