"""LLM-as-judge over real HTTP (the scripted OpenAI-compatible server plays the judge), and
self-consistency; scores read back from the SQLite file with sqlite3."""
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from agent.backends import make_chat_model
from agent.run import TraceResult, run_request
from dataengine.curate import CONSISTENCY_SCORER, best_of_n, self_consistency, verify_traces
from dataengine.judge import DEFAULT_RUBRICS, REPLY_FORMAT, JudgeEndpoint, judge_traces, load_rubric, parse_judgement
from dataengine.judge import JudgeReplyError
from supertiny.errors import UserError
from supertiny.testing import ScriptedOpenAIServer
from tools.registry import Task, get_domain

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
KEY = "judge-secret-key"
REQUESTS = {  # request -> what the judge answers about it
    "turn off the kitchen lights": '{"score": 5, "rationale": "exactly what was asked"}',
    "set a timer for 20 minutes": 'Sure!\n```json\n{"Score": "4", "Reason": "right, terse"}\n```',
    "play some jazz": "I cannot grade this, sorry.",  # garbage: no score anywhere
    "what's the weather in paris tomorrow": '{"score": 9, "rationale": "off the scale"}',
    "turn on the bedroom lamp": "Score: 2 - the lamp id looks wrong",
}


def stored_scores(db, scorer):
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select t.input, s.value, s.details from scores s join traces t on t.id = s.trace_id"
                            " where s.scorer = ? order by t.id", (scorer,)).fetchall()
    return {text: (value, json.loads(details)) for text, value, details in rows}


@pytest.fixture
def traces(store):
    """One real planner run per request, stored as tasks without gold."""
    domain = get_domain("home")
    tasks = [Task(id=f"t{i}", domain="home", split="train", input=text, context=CONTEXT, gold=None)
             for i, text in enumerate(REQUESTS)]
    store.add_tasks(tasks)
    for t in tasks:
        result = run_request(domain, make_chat_model("planner", domain=domain), t.input, t.context)
        store.add_trace(result, domain="home", model="planner", input=t.input, context=t.context, task_id=t.id)
    return tasks


def judge_reply(body):
    """The judge: answers by the request it is shown (order-independent under concurrency)."""
    shown = body["messages"][-1]["content"]
    request = shown.split("\n", 1)[0].removeprefix("Request: ")
    return {"content": REQUESTS[request]}


def test_judgements_are_stored_with_rationale_model_and_provenance_and_garbage_is_a_failed_judgement(store, traces):
    with ScriptedOpenAIServer(judge_reply, api_key=KEY) as server:
        endpoint = JudgeEndpoint("openai:judge-model", base_url=server.base_url, api_key=KEY, max_retries=0)
        counts = judge_traces(store, endpoint, domain="home", concurrency=3)
        sent = list(server.requests)
        again = judge_traces(store, endpoint, domain="home")  # the same judge again
        asked_again = [r["messages"][1]["content"].split("\n", 1)[0] for r in server.requests[len(sent):]]
    assert counts == {"judged": 3, "failed": 2, "skipped": 0, "no_answer": 0, "mean_value": round((1 + 0.75 + 0.25) / 3, 4)}

    scores = stored_scores(store.path, "judge")
    value, details = scores["turn off the kitchen lights"]
    assert value == 1.0 and details["score"] == 5 and details["rationale"] == "exactly what was asked"
    assert details["model"] == "openai:judge-model" and details["reported_model"] == "judge-model"
    provenance = details["provenance"]
    assert provenance["scorer"] == "judge" and provenance["version"] == "1"
    assert provenance["config"]["model"] == "openai:judge-model" and provenance["config"]["rubric"] == "built-in:home"
    assert provenance["config"]["base_url"] == server.base_url and provenance["config"]["scale"] == [1, 5]
    assert scores["set a timer for 20 minutes"][0] == 0.75  # fenced JSON, capitalised keys, "4" as text
    assert scores["set a timer for 20 minutes"][1]["rationale"] == "right, terse"
    assert scores["turn on the bedroom lamp"][0] == 0.25  # prose "Score: 2" still reads
    garbage_value, garbage = scores["play some jazz"]
    assert garbage_value == 0.0 and garbage["failed"] is True and garbage["raw"] == "I cannot grade this, sorry."
    assert "no score" in garbage["error"]
    assert scores["what's the weather in paris tomorrow"][1]["error"] == "score 9 is outside 1..5"
    with sqlite3.connect(store.path) as conn:  # the key is used, never stored
        assert not conn.execute("select count(*) from scores where details like ?", (f"%{KEY}%",)).fetchone()[0]

    system, user = sent[0]["messages"]
    assert system["role"] == "system" and system["content"] == f"{DEFAULT_RUBRICS['home']}\n\n{REPLY_FORMAT}"
    assert sent[0]["model"] == "judge-model" and sent[0]["temperature"] == 0.0
    kitchen = next(r["messages"][1]["content"] for r in sent
                   if r["messages"][1]["content"].startswith("Request: turn off the kitchen lights\n"))
    assert "find_device(" in kitchen and "light.kitchen" in kitchen
    assert 'Final action call: control_device({"device_id": "light.kitchen", "action": "off"})' in kitchen
    assert "- control_device:" in kitchen and "- set_timer:" in kitchen  # the action schemas

    # again: the three good judgements are kept, the two failed ones are asked again
    assert again == {"judged": 0, "failed": 2, "skipped": 3, "no_answer": 0, "mean_value": None}
    assert sorted(asked_again) == ["Request: play some jazz", "Request: what's the weather in paris tomorrow"]
    # another endpoint (a new server listens on another port) is another judge: all five are asked
    with ScriptedOpenAIServer(judge_reply, api_key=KEY) as other:
        elsewhere = judge_traces(store, JudgeEndpoint("openai:judge-model", base_url=other.base_url, api_key=KEY,
                                                      max_retries=0), domain="home")
    assert elsewhere["skipped"] == 0 and len(other.requests) == 5


def test_a_rubric_file_replaces_the_built_in_one_and_bad_files_are_one_line_errors(store, traces, tmp_path):
    rubric = tmp_path / "strict.txt"
    rubric.write_text("Give 1 unless the answer names a device id.\n")
    with ScriptedOpenAIServer(lambda body: {"content": '{"score": 1, "rationale": "strict"}'}, api_key=KEY) as server:
        counts = judge_traces(store, JudgeEndpoint("openai:j", base_url=server.base_url, api_key=KEY), domain="home",
                              rubric_file=rubric, limit=2, scorer="judge_strict")
        assert server.requests[0]["messages"][0]["content"].startswith("Give 1 unless the answer names a device id.")
    assert counts["judged"] == 2
    config = next(iter(stored_scores(store.path, "judge_strict").values()))[1]["provenance"]["config"]
    assert config["rubric"] == str(rubric.resolve()) and len(config["rubric_sha256"]) == 16

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match=r"empty.txt: rubric is empty"):
        load_rubric(empty, "home")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.txt:2: rubric is not UTF-8 text"):
        load_rubric(latin, "home")
    with pytest.raises(UserError, match=r"missing.txt: rubric file not found"):
        load_rubric(tmp_path / "missing.txt", "home")
    assert load_rubric(None, "my_bank").source == "built-in:default"


def test_a_server_error_or_a_non_completion_is_a_failed_judgement_and_a_wrong_key_stops_the_run(store, traces):
    def flaky(body):
        if "play some jazz" in body["messages"][-1]["content"]:
            return {"status": 500, "body": "judge overloaded"}
        if "bedroom lamp" in body["messages"][-1]["content"]:
            return {"raw": "<html>a proxy page, not a completion</html>", "status": 200}
        return {"content": '{"score": 3, "rationale": "fine"}'}

    with ScriptedOpenAIServer(flaky, api_key=KEY) as server:
        counts = judge_traces(store, JudgeEndpoint("openai:j", base_url=server.base_url, api_key=KEY, max_retries=0),
                              domain="home")
        with pytest.raises(UserError, match=r"^judge endpoint .*AuthenticationError.*judgements made so far are stored$"):
            judge_traces(store, JudgeEndpoint("openai:j", base_url=server.base_url, api_key="wrong"), domain="home",
                         force=True)
    assert counts["judged"] == 3 and counts["failed"] == 2
    value, details = stored_scores(store.path, "judge")["play some jazz"]
    assert value == 0.0 and details["failed"] and "500" in details["error"] and "judge overloaded" in details["error"]
    value, details = stored_scores(store.path, "judge")["turn on the bedroom lamp"]
    assert value == 0.0 and details["failed"] and "JSONDecodeError" in details["error"]


@pytest.mark.parametrize("reply,expected", [
    ('{"score": 4, "rationale": "ok"}', (4, "ok")),
    ('prose first {"verdict": {"rating": 2.5, "explanation": "half"}} then more', (2.5, "half")),
    ('{"score": "5/5", "justification": "perfect"}', (5, "perfect")),
    ("{not json} but score = 3", (3, "{not json} but score = 3")),
])
def test_judge_replies_are_read_robustly(reply, expected):
    assert parse_judgement(reply) == expected


@pytest.mark.parametrize("reply,error", [
    ("", "empty reply"), ("looks good to me", "no score"), ('{"score": "high"}', "is not a number"),
    ('{"score": 0}', "outside 1..5"), ('{"score": true}', "is not a number"),
])
def test_unreadable_judge_replies_say_why(reply, error):
    with pytest.raises(JudgeReplyError, match=error):
        parse_judgement(reply)


def test_the_cli_judges_with_json_output_and_refuses_a_non_endpoint_model(store, traces):
    env = {**os.environ, "SUPERTINY_DB": str(store.path), "OPENAI_API_KEY": KEY}
    with ScriptedOpenAIServer(judge_reply, api_key=KEY) as server:
        proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "traces", "judge", "--model", "openai:j",
                               "--base-url", server.base_url, "--max-retries", "0", "--json"],
                              env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["judged"] == 3
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "traces", "judge", "--model", "planner"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "the judge needs an endpoint, use openai:<model>" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---- self-consistency -------------------------------------------------------------------------------------


def answer(call):
    return TraceResult(messages=[{"role": "user", "content": "x"}], final_call=call, status="ok" if call else "no_call",
                       error=None, latency_ms=1.0, prompt_tokens=10, completion_tokens=5, model_calls=1,
                       tool_events=[], model_events=[])


def add_samples(store, domain, task_id, text, calls):
    store.add_tasks([Task(id=task_id, domain=domain, split="train", input=text, context={}, gold=None)])
    return [store.add_trace(answer(call), domain=domain, model="planner", input=text, context={}, task_id=task_id,
                            sample_index=i) for i, call in enumerate(calls)]


def test_self_consistency_votes_with_the_domains_compare(store):
    def units(value, unit):
        return {"name": "submit_answer", "arguments": {"value": value, "unit": unit}}

    miles = add_samples(store, "units", "u1", "3 laps of 400 m and 2.5 km: how many miles?",
                        [units(2.3012, "mi"), units(2.30119, "miles"), units(3.7, "km"), None])
    tie = add_samples(store, "units", "u2", "2 kg in pounds?", [units(4.409, "lb"), units(2.0, "kg")])
    lonely = add_samples(store, "units", "u3", "1 m in cm?", [units(100, "cm")])

    counts = self_consistency(store, domain="units", split="train")
    assert counts == {"tasks": 2, "traces": 6, "skipped_tasks": 1, "unanimous": 0, "no_majority": 1}
    with sqlite3.connect(store.path) as conn:
        rows = {trace_id: (value, json.loads(details)) for trace_id, value, details in conn.execute(
            "select trace_id, value, details from scores where scorer = ?", (CONSISTENCY_SCORER,))}
    # within tolerance and "miles" = "mi": two of four samples agree; the no-answer sample counts as a sample
    assert [rows[i][0] for i in miles] == [0.5, 0.5, 0.25, 0.0]
    assert [rows[i][1]["majority"] for i in miles] == [True, True, False, False]
    assert rows[miles[0]][1]["majority_call"] == units(2.3012, "mi") and rows[miles[0]][1]["answers"] == 2
    assert [rows[i][0] for i in tie] == [0.5, 0.5] and not any(rows[i][1]["majority"] for i in tie)
    assert lonely[0] not in rows  # one sample says nothing about consistency
    config = rows[miles[0]][1]["provenance"]["config"]
    assert config["compare"]["function"] == "tools.units.functions.compare_answers" and config["min_samples"] == 2

    # no gold anywhere: build a dataset from the majority answers instead
    dataset, kept = best_of_n(store, name="majority", domain="units", scorer=CONSISTENCY_SCORER, min_score=0.5,
                              require=["self_consistency>0.4"])
    assert [trace.id for trace, _ in store.dataset_items(dataset.id)] == [miles[0], tie[0]]
    assert dataset.spec["scorer"] == CONSISTENCY_SCORER


def test_verifier_scores_carry_provenance(store):
    add_samples(store, "units", "u1", "1 m in cm?", [{"name": "submit_answer", "arguments": {"value": 100, "unit": "cm"}}])
    with sqlite3.connect(store.path) as conn:
        conn.execute("""update tasks set gold = '{"name": "submit_answer", "arguments": {"value": 100, "unit": "cm"}}'""")
    verify_traces(store, domain="units", split="train")
    with sqlite3.connect(store.path) as conn:
        rows = dict(conn.execute("select scorer, json_extract(details, '$.provenance') from scores"))
    gold, check = json.loads(rows["gold_match"]), json.loads(rows["domain_check"])
    assert gold["scorer"] == "gold_match" and gold["version"] == "1"
    assert gold["config"]["compare"]["function"] == "tools.units.functions.compare_answers"
    assert len(gold["config"]["compare"]["source_sha256"]) == 16
    assert check["config"]["check"]["function"] == "tools.units.functions.check_answer"
