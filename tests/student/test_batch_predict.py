"""Batched student answers: the same greedy answers as one request at a time, in order, with
the constrained function names and program fallback working per row of the batch."""
from __future__ import annotations

import pytest

from student.evaluate import Prediction as EvalPrediction, median_latency, predict_with_student
from student.format import direct_prompt
from student.generate import DirectStudent, _generated_length
from student.train import SFTRunConfig, train_student
from tests.student.tiny_student import CONTEXT, sft_student, tiny_model
from tools.home.tasks import generate_tasks

# A program-mode student: lookups with the user's words, then the action with references into them.
PLANS = [
    ("turn off the kitchen lights",
     'find_device(room="kitchen", device_type="lights"); control_device(device_id=$1[0].device_id, action="off")'),
    ("switch on the bedroom lamp",
     'find_device(room="bedroom", device_type="lamp"); control_device(device_id=$1[0].device_id, action="on")'),
    ("weather in paris tomorrow",
     'find_city(name="paris"); resolve_datetime(expression="tomorrow", now=$now); '
     'get_weather(city=$1.city, date=$2.date)'),
    ("set a timer for ten minutes", 'resolve_duration(expression="ten minutes"); set_timer(duration=$1.duration)'),
]
PROGRAM_EXAMPLES = [{"prompt": direct_prompt(text, CONTEXT), "completion": " " + plan} for text, plan in PLANS]


@pytest.fixture(scope="module")
def trained_direct_student(tmp_path_factory):
    return sft_student(tmp_path_factory)


@pytest.fixture(scope="module")
def trained_program_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("program-student")
    base = tiny_model(root / "base")
    config = SFTRunConfig(base_model=str(base), output_dir=str(root / "student"), learning_rate=3e-3, max_steps=150,
                          warmup_ratio=0.0)
    return train_student(PROGRAM_EXAMPLES * 10, config, lineage={"format": "program", "domain": "home"})


def test_generated_length_counts_up_to_eos_or_padding():
    assert _generated_length([5, 6, 2, 0, 0], pad_token_id=0, eos_token_id=2) == 3
    assert _generated_length([5, 6, 0, 0], pad_token_id=0, eos_token_id=2) == 2  # stopped at a newline
    assert _generated_length([5, 6, 7], pad_token_id=0, eos_token_id=2) == 3
    assert _generated_length([5, 2, 2, 2], pad_token_id=2, eos_token_id=2) == 2  # pad is the EOS id


@pytest.mark.parametrize("fixture", ["trained_direct_student", "trained_program_student"])
def test_a_batch_gives_the_same_greedy_answers_as_single_requests(request, fixture):
    path = request.getfixturevalue(fixture)
    # Known requests and unseen ones of every length, so the batches are padded unevenly.
    tasks = generate_tasks(seed=3, n_train=0, n_dev=0, n_test=8)
    items = [(text, CONTEXT) for text, _ in PLANS] + [(t.input, t.context) for t in tasks]
    student = DirectStudent(path, fallback_samples=0)  # greedy only: sampling is random
    one_by_one = student.predict_many(items, batch_size=1)
    batched = student.predict_many(items, batch_size=5)  # 5, 5, 2: a short last batch
    assert [p.raw for p in batched] == [p.raw for p in one_by_one]
    assert [p.call for p in batched] == [p.call for p in one_by_one]
    assert [p.prompt_tokens for p in batched] == [p.prompt_tokens for p in one_by_one]
    assert [p.completion_tokens for p in batched] == [p.completion_tokens for p in one_by_one]
    assert len({p.prompt_tokens for p in batched}) > 1  # the batches really were padded


def test_eval_answers_a_latency_sample_alone_and_the_rest_in_batches(trained_program_student):
    tasks = [t for t in generate_tasks(seed=3, n_train=0, n_dev=0, n_test=10)]
    rows = [type("Task", (), {"id": f"t{i}", "input": t.input, "context": t.context}) for i, t in enumerate(tasks)]
    steps = []
    predictions = predict_with_student(rows, trained_program_student, on_step=lambda: steps.append(1),
                                       batch_size=4, latency_sample=3)
    assert [p.task_id for p in predictions] == [r.id for r in rows]  # in the tasks' order
    assert len(steps) == 10
    sizes = [p.batch_size for p in predictions]
    assert sizes.count(1) == 3 and sorted(set(sizes)) == [1, 3, 4]  # 3 alone; 7 left: a batch of 4 and one of 3
    assert median_latency(predictions) == sorted(p.latency_ms for p in predictions if p.batch_size == 1)[1]
    assert median_latency([EvalPrediction("x", None, 5.0, 1, 1, batch_size=4)]) == 5.0


def test_eval_gives_a_program_student_the_fallback_sample_count_asked_for(trained_program_student):
    tasks = generate_tasks(seed=5, n_train=0, n_dev=0, n_test=6)
    rows = [type("Task", (), {"id": f"t{i}", "input": t.input, "context": t.context}) for i, t in enumerate(tasks)]
    greedy = predict_with_student(rows, trained_program_student, latency_sample=0, fallback_samples=0)
    retried = predict_with_student(rows, trained_program_student, latency_sample=0, fallback_samples=3)
    assert any(p.call is None for p in greedy)  # so there is something to retry
    for alone, more in zip(greedy, retried):
        assert alone.model_calls == 1
        if alone.call is None:  # a second generation, which read the prompt again
            assert more.model_calls == 2 and more.tokens > alone.tokens
        else:
            assert more.model_calls == 1 and more.tokens == alone.tokens


def test_a_batched_program_student_runs_its_plans_and_retries_only_the_failed_ones(trained_program_student):
    student = DirectStudent(trained_program_student, fallback_samples=3)
    unseen = [(t.input, t.context) for t in generate_tasks(seed=5, n_train=0, n_dev=0, n_test=6)]
    predictions = student.predict_batch([(text, CONTEXT) for text, _ in PLANS] + unseen)
    assert predictions[1].call == {"name": "control_device", "arguments": {"device_id": "light.bedroom", "action": "on"}}
    assert predictions[0].call == {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}
    assert predictions[3].call == {"name": "set_timer", "arguments": {"duration": "PT10M"}}
    assert predictions[2].call["name"] == "get_weather" and predictions[2].call["arguments"]["date"] == "2026-03-15"
    greedy = DirectStudent(trained_program_student, fallback_samples=0).predict_batch(
        [(text, CONTEXT) for text, _ in PLANS] + unseen)
    assert any(p.call is None for p in greedy) and any(p.call is not None for p in greedy)  # both branches
    for alone, retried in zip(greedy, predictions):
        if alone.call is not None:  # a plan the tools accept is kept, with its tokens
            assert (retried.raw, retried.call, retried.completion_tokens) == (alone.raw, alone.call,
                                                                              alone.completion_tokens)
        else:  # a rejected plan cost more tokens: the sampled retries
            assert retried.completion_tokens > alone.completion_tokens


def test_the_sampled_retries_are_seeded_and_leave_the_callers_random_state_alone(trained_program_student):
    import torch

    unseen = [(t.input, t.context) for t in generate_tasks(seed=5, n_train=0, n_dev=0, n_test=6)]
    student = DirectStudent(trained_program_student, fallback_samples=3)
    greedy = DirectStudent(trained_program_student, fallback_samples=0).predict_batch(unseen)
    assert any(p.call is None for p in greedy)  # so there are retries to sample
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = student.predict_batch(unseen)
    assert torch.equal(torch.rand(1), expected)  # the caller's generator moved as if we had not sampled
    torch.manual_seed(7)
    second = student.predict_batch(unseen)
    assert [(p.raw, p.completion_tokens) for p in first] == [(p.raw, p.completion_tokens) for p in second]


def test_healing_measures_a_model_dir_without_a_manifest_in_its_lineage_format(trained_program_student, tmp_path):
    """``compress heal`` measures the healed model before its manifest is written: the lineage
    passed in says it writes plans. Read as direct calls, every plan would miss (a bug once)."""
    import shutil
    from types import SimpleNamespace

    from student.distill import measure_student
    from student.manifest import MANIFEST_NAME, read_manifest
    from tools.registry import get_domain

    domain = get_domain("home")
    tasks = [SimpleNamespace(input=text, context=CONTEXT, gold=call)
             for (text, _), call in zip(PLANS, (
                 {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}},
                 {"name": "control_device", "arguments": {"device_id": "light.bedroom", "action": "on"}},
                 {"name": "get_weather", "arguments": {"city": "Paris", "date": "2026-03-15"}},
                 {"name": "set_timer", "arguments": {"duration": "PT10M"}}))]
    with_manifest = measure_student(trained_program_student, PROGRAM_EXAMPLES, tasks, domain.compare)
    assert with_manifest["exact_match"] >= 0.5 and with_manifest["exact_match_tasks"] == 4
    bare = tmp_path / "no-manifest-yet"
    shutil.copytree(trained_program_student, bare, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    lineage = read_manifest(trained_program_student)["lineage"]
    assert measure_student(bare, PROGRAM_EXAMPLES, tasks, domain.compare, lineage=lineage, domain=domain) == \
        with_manifest
    assert measure_student(bare, PROGRAM_EXAMPLES, tasks, domain.compare)["exact_match"] == 0.0  # as direct calls


def test_a_requests_sampled_retries_do_not_depend_on_what_else_shares_its_batch(trained_program_student):
    unseen = [(t.input, t.context) for t in generate_tasks(seed=5, n_train=0, n_dev=0, n_test=6)]
    student = DirectStudent(trained_program_student, fallback_samples=3)
    greedy = DirectStudent(trained_program_student, fallback_samples=0).predict_batch(unseen)
    assert sum(p.call is None for p in greedy) >= 2  # several retries in one batch
    together = student.predict_batch(unseen)
    reversed_batch = student.predict_batch(unseen[::-1])[::-1]
    alone = [student.predict_batch([item])[0] for item in unseen]
    for answers in (reversed_batch, alone):
        assert [(p.raw, p.call, p.completion_tokens) for p in answers] == \
               [(p.raw, p.call, p.completion_tokens) for p in together]
