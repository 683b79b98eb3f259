"""``supertiny traces review``: first as a person uses it (the real CLI on a pseudo-terminal,
short commands typed, the screen read back), then what the decisions change: the review scores
in the SQLite file, dataset build and export."""
from __future__ import annotations

import json
import re
import sqlite3
import sys

import pytest

from agent.backends import make_chat_model
from agent.run import run_request
from dataengine.curate import ScoreCondition, best_of_n, verify_traces
from dataengine.export import chat_records, direct_examples
from dataengine.review import ReviewSession, parse_edited_call, select_traces
from supertiny.errors import UserError
from tests.terminal import Terminal
from tests.test_cli import run
from tools.registry import Task, get_domain

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
TASKS = [
    ("turn off the kitchen lights", {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}),
    ("set a timer for 20 minutes", {"name": "set_timer", "arguments": {"duration": "PT20M"}}),
    ("what's the weather in paris tomorrow", {"name": "get_weather", "arguments": {"city": "Paris", "date": "2026-03-15"}}),
]


@pytest.fixture
def reviewable(store):
    """Three verified planner runs, one per task; returns their trace ids."""
    domain = get_domain("home")
    tasks = [Task(id=f"t{i}", domain="home", split="train", input=text, context=CONTEXT, gold=gold)
             for i, (text, gold) in enumerate(TASKS, start=1)]
    store.add_tasks(tasks)
    ids = []
    for t in tasks:
        result = run_request(domain, make_chat_model("planner", domain=domain), t.input, t.context)
        ids.append(store.add_trace(result, domain="home", model="planner", input=t.input, context=t.context,
                                   task_id=t.id))
    assert verify_traces(store, domain="home", split="train")["passed"] == 3
    return ids


@pytest.fixture
def terminal(store, reviewable):
    term = Terminal([sys.executable, "-m", "supertiny.cli", "--db", str(store.path), "traces", "review", "--split",
                     "train"])
    yield term
    term.close()


def cli(db, *args, check=True):
    return run(list(args), db, check=check)


def review_rows(db):
    with sqlite3.connect(db) as conn:
        return {trace_id: (value, json.loads(details)) for trace_id, value, details in
                conn.execute("select trace_id, value, details from scores where scorer = 'review'")}


def test_a_review_session_at_the_terminal_then_build_and_export_follow_it(terminal, store, reviewable):
    first, second, third = reviewable
    shown = terminal.expect("supertiny traces review", f"trace {first} (1/3)", "request turn off the kitchen lights",
                            '→ find_device(', 'answer control_device({"device_id": "light.kitchen", "action": "off"})',
                            "gold   control_device(", "scores gold_match 1", "review not reviewed")
    assert shown.endswith(f"review 1/3 #{first} [a r e c n p s q ?]> ")
    assert "accept the answer" in terminal.command("?", "reject it", "edit the answer", "previous trace")
    assert "note kept: a or r stores it" in terminal.command("c check the room name", "note kept")
    shown = terminal.command("a", f"accepted trace {first}", f"trace {second} (2/3)",
                             "request set a timer for 20 minutes")
    assert shown.endswith(f"review 2/3 #{second} [a r e c n p s q ?]> ")

    # edit: a bad answer is a one-line error and nothing changes; a good one accepts the trace
    shown = terminal.command("e", 'current: {"name": "set_timer", "arguments": {"duration": "PT20M"}}')
    assert shown.endswith("answer JSON> ")
    shown = terminal.command('{"duration": 20}',
                             "error: edit: field 'arguments.duration': Input should be a valid string")
    assert shown.endswith(f"review 2/3 #{second} [a r e c n p s q ?]> ")
    assert "is not an action of domain home" in terminal.command('e {"name": "launch_rocket"}', "error:")
    assert "not JSON" in terminal.command("e {duration: PT25M}", "error:")
    assert second not in review_rows(store.path)
    terminal.command('e {"duration": "PT25M"}', f'accepted trace {second} with set_timer({{"duration": "PT25M"}})',
                     f"trace {third} (3/3)")
    shown = terminal.command("r wrong day for paris", f"rejected trace {third}", "that was the last of 3 traces")
    shown = terminal.command("p", f"trace {second} (2/3)",
                             'review accepted with edited answer set_timer({"duration": "PT25M"})')
    assert "unknown command 'x'" in terminal.command("x", "error:")
    code, shown = terminal.finish("q")
    assert code == 0 and "reviewed 3: 1 accepted, 1 edited, 1 rejected" in shown

    rows = review_rows(store.path)
    assert rows[first][0] == 1.0 and rows[first][1]["decision"] == "accept"
    assert rows[first][1]["note"] == "check the room name" and "final_call" not in rows[first][1]
    assert rows[second][0] == 1.0 and rows[second][1]["final_call"] == {"name": "set_timer",
                                                                        "arguments": {"duration": "PT25M"}}
    assert rows[second][1]["original_final_call"] == {"name": "set_timer", "arguments": {"duration": "PT20M"}}
    assert rows[third][0] == 0.0 and rows[third][1]["note"] == "wrong day for paris"
    assert rows[third][1]["provenance"]["scorer"] == "review" and rows[third][1]["provenance"]["config"]["reviewer"]

    # the build follows the reviewer: the rejected trace is dropped although it matches gold, and
    # the edited answer is frozen into the version and exported in place of the teacher's
    built = json.loads(cli(store.path, "dataset", "build", "reviewed", "--json").stdout)
    assert built == [{"dataset": "reviewed@1", "tasks": 3, "kept": 2, "dropped": 1, "edited": 1}]
    direct = [json.loads(line) for line in cli(store.path, "dataset", "export", "reviewed", "--format", "direct").stdout.splitlines()]
    assert [d["completion"] for d in direct] == [' control_device(device_id="light.kitchen", action="off")',
                                                 ' set_timer(duration="PT25M")']
    chat = [json.loads(line) for line in cli(store.path, "dataset", "export", "reviewed").stdout.splitlines()]
    last = chat[1]["messages"][-1]["tool_calls"][0]["function"]
    assert last["name"] == "set_timer" and json.loads(last["arguments"]) == {"duration": "PT25M"}
    assert chat[1]["metadata"]["trace_id"] == second


def test_an_existing_version_never_changes_after_a_later_review(store, reviewable):
    first = reviewable[0]
    dataset, _ = best_of_n(store, name="v", domain="home")
    before = direct_examples(store, "v@1")
    session = ReviewSession(store, [first], reviewer="ann")
    session.edit('{"device_id": "light.kitchen", "action": "set", "value": 30}', note="dim, do not switch off")
    assert direct_examples(store, "v@1") == before
    best_of_n(store, name="v", domain="home")
    assert direct_examples(store, "v@2")[0]["completion"] == ' control_device(device_id="light.kitchen", action="set", value=30)'
    assert chat_records(store, "v@2")[0]["messages"][-1]["tool_calls"][0]["function"]["name"] == "control_device"
    assert len(chat_records(store, "v@2")) == len(chat_records(store, "v@1"))


def test_edited_answers_are_checked_against_the_action_schema():
    domain = get_domain("home")
    current = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}
    assert parse_edited_call('{"action": "on", "device_id": "light.kitchen"}', domain, current) == {
        "name": "control_device", "arguments": {"action": "on", "device_id": "light.kitchen"}}
    assert parse_edited_call('{"name": "set_timer", "arguments": {"duration": "PT5M"}}', domain, current) == {
        "name": "set_timer", "arguments": {"duration": "PT5M"}}
    for typed, message in [
        ('{"device_id": "light.kitchen", "action": "dim"}', "field 'arguments.action': Input should be 'on', 'off' or 'set'"),
        ('{"device_id": "light.kitchen"}', "field 'arguments.action': Field required"),
        ('{"device_id": "light.kitchen", "action": "on", "colour": "red"}', "field 'arguments.colour': not a parameter"),
        ('["on"]', "type a JSON object"),
        ('{"name": "control_device", "arguments": [1]}', "field 'arguments': must be a JSON object"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            parse_edited_call(typed, domain, current)
    with pytest.raises(UserError, match="this trace has no action"):
        parse_edited_call('{"duration": "PT5M"}', domain, None)


def test_filters_choose_what_to_review(store, reviewable):
    first, second, third = reviewable
    ReviewSession(store, [second], reviewer="ann").decide("reject")
    assert select_traces(store, split="train") == reviewable
    assert select_traces(store, split="train", pending=True) == [first, third]
    assert select_traces(store, where=[ScoreCondition("review", "=", 0)]) == [second]
    assert select_traces(store, where=[ScoreCondition("gold_match", "<", 1)]) == []
    assert select_traces(store, split="dev") == [] and select_traces(store, status="ok", limit=1) == [first]
    proc = cli(store.path, "traces", "review", "--score", "gold_match<1")
    assert proc.returncode == 0 and "no traces match these filters" in proc.stdout
    proc = cli(store.path, "traces", "review", "--score", "gold_match<<1", check=False)
    assert proc.returncode == 1 and "--score 'gold_match<<1': use SCORER" in proc.stderr


def test_a_note_after_the_decision_is_stored_at_once_and_accepting_again_keeps_the_edit(store, reviewable):
    session = ReviewSession(store, reviewable[:1], reviewer="ann")
    session.edit('{"device_id": "light.kitchen", "action": "on"}')
    assert session.add_note("the user said off, but meant on") is True
    session.decide("accept")
    value, details = review_rows(store.path)[reviewable[0]]
    assert value == 1.0 and details["note"] == "the user said off, but meant on"
    assert details["final_call"]["arguments"]["action"] == "on"
