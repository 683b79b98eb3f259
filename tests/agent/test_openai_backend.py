"""The real teacher against a real OpenAI-compatible endpoint: ``make_chat_model("openai:...")``
(langchain ``ChatOpenAI``) talks HTTP to a scripted server on 127.0.0.1, ``run_request`` runs
the home domain's tools, and the trace lands in a real SQLite file that we read back with
``sqlite3``. Only the model's decisions are scripted."""
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.backends import make_chat_model
from agent.run import run_request
from supertiny.testing import ScriptedOpenAIServer, count_tokens, prompt_tokens
from tools.registry import get_domain

REQUEST = "turn off the kitchen lights"
CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
FIND_KITCHEN_LIGHTS = {"tool_calls": [{"name": "find_device",
                                       "arguments": {"room": "kitchen", "device_type": "lights"}}]}
TURN_THEM_OFF = {"tool_calls": [{"name": "control_device",
                                 "arguments": {"device_id": "light.kitchen", "action": "off"}}]}
FINAL_CALL = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}


def run_and_store(server, store, *, max_model_calls=6, **options):
    """One ``agent run`` as the CLI does it: returns (result, trace_id)."""
    domain = get_domain("home")
    model = make_chat_model("openai:test-model", domain=domain, base_url=server.base_url, api_key="k", **options)
    result = run_request(domain, model, REQUEST, CONTEXT, max_model_calls=max_model_calls)
    trace_id = store.add_trace(result, domain="home", model="openai:test-model", input=REQUEST, context=CONTEXT)
    return result, trace_id


def query(db, sql, *params):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def stored(db, trace_id):
    trace, = query(db, "select * from traces where id = ?", trace_id)
    model_calls = query(db, "select * from model_calls where trace_id = ? order by step", trace_id)
    tool_calls = query(db, "select * from tool_calls where trace_id = ? order by position", trace_id)
    return trace, model_calls, tool_calls


def completion_tokens_of(step):
    """What the server counts as generated for a scripted tool-call step."""
    return sum(count_tokens(call["name"]) + count_tokens(json.dumps(call["arguments"])) for call in step["tool_calls"])


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
def test_a_run_stores_tokens_finish_reason_model_and_logprobs_per_call(store, streaming):
    with ScriptedOpenAIServer([FIND_KITCHEN_LIGHTS, TURN_THEM_OFF], api_key="k") as server:
        result, trace_id = run_and_store(server, store, top_logprobs=3, streaming=streaming)
    assert result.status == "ok" and result.error is None and result.final_call == FINAL_CALL

    trace, model_calls, tool_calls = stored(store.path, trace_id)
    assert trace["status"] == "ok" and json.loads(trace["final_call"]) == FINAL_CALL
    assert trace["model_calls"] == 2 == len(model_calls) == len(server.requests)
    for row, request, step in zip(model_calls, server.requests, [FIND_KITCHEN_LIGHTS, TURN_THEM_OFF]):
        assert row["prompt_tokens"] == prompt_tokens(request)
        assert row["completion_tokens"] == completion_tokens_of(step)
        assert row["finish_reason"] == "tool_calls" and row["model"] == "test-model"
        assert row["latency_ms"] > 0 and row["error"] is None
        logprobs = json.loads(row["logprobs"])
        assert len(logprobs) == row["completion_tokens"]
        assert logprobs[0][0] == step["tool_calls"][0]["name"]
        for token, logprob, alternatives in logprobs:  # compact: [token, logprob, [[alt, logprob], ...]]
            assert logprob < 0 and len(alternatives) == 3 and alternatives[0] == [token, logprob]
    assert trace["prompt_tokens"] == sum(r["prompt_tokens"] for r in model_calls)
    assert trace["completion_tokens"] == sum(r["completion_tokens"] for r in model_calls)

    assert [(c["name"], json.loads(c["result"]), c["error"]) for c in tool_calls] == [
        ("find_device", [{"device_id": "light.kitchen", "room": "kitchen", "type": "light"}], None)]
    # What went over the wire: the options, every tool, and the tool's answer in the second call.
    first, second = server.requests
    assert first["logprobs"] is True and first["top_logprobs"] == 3 and first["model"] == "test-model"
    assert bool(first.get("stream")) is streaming
    if streaming:
        assert first["stream_options"] == {"include_usage": True}
    # every tool schema, byte for byte as langchain converts it (they travel as extra_body: agent/openai_chat.py)
    home = get_domain("home")
    assert first["tools"] == [convert_to_openai_tool(t) for t in home.tools + home.actions]
    assert {t["function"]["name"] for t in first["tools"]} >= {"find_device", "control_device", "set_timer"}
    tool_reply = second["messages"][-1]
    assert tool_reply["role"] == "tool" and "light.kitchen" in tool_reply["content"]
    assert json.loads(trace["messages"])[-2]["tool_calls"][0]["function"]["name"] == "control_device"


FAULTS = [
    {"tool_calls": [{"name": "find_device", "arguments": "{not json"}]},
    {"tool_calls": [{"name": "find_lights", "arguments": {"room": "kitchen"}}]},
    {"tool_calls": [{"name": "find_device", "arguments": {"room": "spaceship", "device_type": "lights"}}]},
    TURN_THEM_OFF,
]

@pytest.mark.parametrize("streaming", [False, True],
                         ids=["json", "stream"])
def test_tool_faults_go_back_to_the_model_and_the_run_still_succeeds(store, streaming):
    with ScriptedOpenAIServer(FAULTS, api_key="k") as server:
        result, trace_id = run_and_store(server, store, streaming=streaming)
    assert server.script_errors == []
    trace, model_calls, tool_calls = stored(store.path, trace_id)
    assert trace["status"] == "ok" and json.loads(trace["final_call"]) == FINAL_CALL
    assert len(model_calls) == 4
    assert [(c["step"], c["name"]) for c in tool_calls] == [(1, "find_device"), (2, "find_lights"), (3, "find_device")]
    malformed, unknown, raised = (c["error"] for c in tool_calls)
    assert "malformed tool call arguments" in malformed and json.loads(tool_calls[0]["args"]) == "{not json"
    assert "unknown tool 'find_lights'" in unknown
    assert "ValueError" in raised and "no room like 'spaceship'" in raised
    # Each fault reached the model as an error tool message answering the faulty call's id, and
    # the history stayed valid chat format (the server refuses unanswered tool calls with a 400).
    for request, fault in zip(server.requests[1:], ["malformed", "unknown tool", "no room like"]):
        call, reply = request["messages"][-2:]
        assert reply["role"] == "tool" and reply["content"].startswith("Error:") and fault in reply["content"]
        assert reply["tool_call_id"] == call["tool_calls"][0]["id"]
    assert server.requests[1]["messages"][-2]["tool_calls"][0]["function"]["arguments"] == "{not json"


@pytest.mark.parametrize("streaming", [False, True],
                         ids=["json", "stream"])
def test_a_tool_call_cut_by_max_tokens_is_not_executed(store, streaming):
    # 16 tokens stop just before the closing quote: '{"room": "kitchen", "device_type": "lights' --
    # and the endpoint says finish_reason "length". A cut call must not run as if it were whole.
    with ScriptedOpenAIServer([FIND_KITCHEN_LIGHTS, {"content": "My answer was cut."}], api_key="k") as server:
        result, trace_id = run_and_store(server, store, max_tokens=16, streaming=streaming, max_retries=0)
    assert server.script_errors == [] and result.status == "no_call"
    trace, model_calls, tool_calls = stored(store.path, trace_id)
    assert server.requests[0]["max_completion_tokens"] == 16
    assert [r["finish_reason"] for r in model_calls] == ["length", "stop"]
    assert tool_calls[0]["error"] is not None and tool_calls[0]["result"] is None
    assert server.requests[1]["messages"][-1]["content"].startswith("Error:")


def test_a_model_that_never_acts_exhausts_the_step_budget(store):
    with ScriptedOpenAIServer(lambda body: FIND_KITCHEN_LIGHTS, api_key="k") as server:
        result, trace_id = run_and_store(server, store, max_model_calls=3)
    trace, model_calls, tool_calls = stored(store.path, trace_id)
    assert result.status == trace["status"] == "budget_exhausted" and trace["final_call"] is None
    assert len(server.requests) == len(model_calls) == len(tool_calls) == trace["model_calls"] == 3


def test_a_trace_without_an_action_has_a_sql_null_final_call(store):
    with ScriptedOpenAIServer([{"content": "I cannot do that."}], api_key="k") as server:
        result, trace_id = run_and_store(server, store)
    assert result.status == "no_call"
    assert query(store.path, "select id from traces where final_call is null") == [{"id": trace_id}]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_an_endpoint_failing_beyond_retries_ends_the_trace_with_error(store, max_retries):
    failures = [{"status": 500, "body": "the model server crashed", "retry_after": 0.01}] * (max_retries + 1)
    with ScriptedOpenAIServer([FIND_KITCHEN_LIGHTS, *failures], api_key="k") as server:
        result, trace_id = run_and_store(server, store, max_retries=max_retries)  # must not raise
        assert server.remaining == 0
    trace, model_calls, tool_calls = stored(store.path, trace_id)
    assert result.status == trace["status"] == "error"
    assert "Error code: 500" in trace["error"] and "the model server crashed" in trace["error"]
    assert len(server.requests) == 1 + max_retries + 1
    assert [c["name"] for c in tool_calls] == ["find_device"]  # the work before the failure is kept
    assert model_calls[0]["error"] is None and "the model server crashed" in model_calls[1]["error"]


def test_a_request_past_the_timeout_ends_the_trace_with_error(store):
    with ScriptedOpenAIServer([{**FIND_KITCHEN_LIGHTS, "delay": 5}], api_key="k") as server:
        result, trace_id = run_and_store(server, store, timeout=0.3, max_retries=0)
    trace, model_calls, _ = stored(store.path, trace_id)
    assert trace["status"] == "error" and "Timeout" in trace["error"] and len(model_calls) == 1
    assert "Timeout" in model_calls[0]["error"]


def test_a_wrong_api_key_ends_the_trace_with_error(store):
    with ScriptedOpenAIServer([TURN_THEM_OFF], api_key="another key") as server:
        result, trace_id = run_and_store(server, store)
    assert result.status == "error" and "AuthenticationError" in result.error and server.remaining == 1


def test_the_cli_runs_the_teacher_against_the_endpoint(tmp_path):
    db = tmp_path / "cli.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    with ScriptedOpenAIServer([FIND_KITCHEN_LIGHTS, TURN_THEM_OFF], api_key="k") as server:
        proc = subprocess.run(
            [sys.executable, "-m", "supertiny.cli", "--db", str(db), "agent", "run", "--model", "openai:test-model",
             "--base-url", server.base_url, "--api-key", "k", "--top-logprobs", "2", "--max-tokens", "64",
             "--no-parallel-tool-calls", REQUEST, "--json"],
            env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["final_call"] == FINAL_CALL and summary["model_calls"] == 2
    first = server.requests[0]
    assert first["top_logprobs"] == 2 and first["max_completion_tokens"] == 64
    assert first["parallel_tool_calls"] is False
    trace, model_calls, tool_calls = stored(db, summary["trace_id"])
    assert trace["model"] == "openai:test-model" and trace["status"] == "ok"
    assert [r["model"] for r in model_calls] == ["test-model", "test-model"]
    assert all(len(json.loads(r["logprobs"])) == r["completion_tokens"] for r in model_calls)
    assert all(len(alternatives) == 2 for r in model_calls for _, _, alternatives in json.loads(r["logprobs"]))
    assert [c["name"] for c in tool_calls] == ["find_device"]
