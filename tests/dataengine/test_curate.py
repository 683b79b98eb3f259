import json

from agent.batch import GenerateConfig, generate
from dataengine.curate import best_of_n, verify_traces
from dataengine.verify import ungrounded_arguments
from dataengine.export import chat_records, direct_examples
from student.format import parse_call
from tools.home.tasks import generate_tasks


def test_verify_then_best_of_n_keeps_one_verified_trace_per_task(store):
    store.add_tasks(generate_tasks(seed=0, n_train=40, n_dev=0, n_test=0))
    generate(store, GenerateConfig(split="train", samples=4, temperature=1.0, concurrency=4))
    counts = verify_traces(store, domain="home", split="train")
    assert counts["scored"] == 160 and 0 < counts["failed"] < counts["passed"]
    assert verify_traces(store, domain="home", split="train") == counts  # idempotent

    dataset, kept = best_of_n(store, name="bon", domain="home", split="train")
    items = store.dataset_items(dataset.id)
    assert kept["kept"] == len(items) and kept["tasks"] == 40
    assert len({task.id for _, task in items}) == len(items)
    scored = {trace.id: value for trace, value in store.scored_traces(domain="home", split="train", scorer="gold_match")}
    by_task = {}
    for trace, _ in store.scored_traces(domain="home", split="train", scorer="gold_match"):
        by_task.setdefault(trace.task_id, []).append(trace)
    calls = store.tool_calls_by_trace(scored)

    def rank(t):
        return ungrounded_arguments(calls.get(t.id, []), t.final_call), t.model_calls

    passed_over_ungrounded = 0
    for trace, task in items:
        assert scored[trace.id] == 1.0 and trace.final_call is not None
        rivals = [t for t in by_task[task.id] if scored[t.id] == 1.0]
        # tie-break: answers read from the tools' results first, then fewest steps
        assert rank(trace) == min(rank(t) for t in rivals)
        passed_over_ungrounded += any(rank(t)[0] > rank(trace)[0] for t in rivals)
    # the planner sometimes names a catalog entry without looking it up: such samples lost
    assert passed_over_ungrounded > 0


def test_exports_are_chat_format_and_direct_pairs(store):
    store.add_tasks(generate_tasks(seed=0, n_train=10, n_dev=0, n_test=0))
    generate(store, GenerateConfig(split="train", samples=1, temperature=0.0))
    verify_traces(store, domain="home", split="train")
    dataset, _ = best_of_n(store, name="x", domain="home")
    records = chat_records(store, "x")
    assert records and all(r["messages"][-1]["role"] == "assistant" for r in records)
    last = records[0]["messages"][-1]["tool_calls"][0]["function"]
    assert json.loads(last["arguments"]) and {t["function"]["name"] for t in records[0]["tools"]} >= {"set_alarm", "find_device"}
    assert records[0]["metadata"]["dataset"] == "x@1"
    for pair, (trace, _) in zip(direct_examples(store, "x"), store.dataset_items(dataset.id)):
        assert pair["prompt"].endswith("\n=>") and trace.input in pair["prompt"]
        assert parse_call(pair["completion"]) == trace.final_call
