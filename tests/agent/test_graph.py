import asyncio
import json
import threading

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from agent.backends import make_chat_model, with_seed
from agent.graph import build_agent
from agent.run import arun_request, run_request
from dataengine.verify import compare_calls
from tests.conftest import ScriptedChatModel, tool_call
from tools.home.tasks import generate_tasks
from tools.registry import Domain, get_domain

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}


@pytest.fixture(scope="module")
def home():
    return get_domain("home")


def test_agent_is_a_compiled_state_graph_with_named_nodes(home):
    graph = build_agent(home, make_chat_model("planner"))
    assert {"call_model", "run_tools", "submit_action", "no_call", "budget_exhausted"} <= set(graph.get_graph().nodes)


def test_planner_solves_a_request_through_lookup_tools(home):
    result = run_request(home, make_chat_model("planner"), "turn off the kitchen lights", CONTEXT)
    assert result.status == "ok"
    assert result.final_call == {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}
    assert [e["name"] for e in result.tool_events] == ["find_device"]
    roles = [m["role"] for m in result.messages]
    assert roles[:3] == ["system", "user", "assistant"] and "tool" in roles
    assert result.model_calls == 2 and result.prompt_tokens > 100 and result.completion_tokens > 0


def test_planner_resolves_relative_times_from_context(home):
    result = run_request(home, make_chat_model("planner"), "wake me up tomorrow at 6:45 am", CONTEXT)
    assert result.final_call == {"name": "set_alarm", "arguments": {"time": "2026-03-15T06:45"}}


def test_planner_samples_differ_with_seed_but_greedy_is_deterministic(home):
    tasks = generate_tasks(seed=0, n_train=60, n_dev=0, n_test=0)
    warm = make_chat_model("planner", temperature=1.0)
    greedy = make_chat_model("planner", temperature=0.0)

    def calls(model, seed):
        return [run_request(home, with_seed(model, seed), t.input, t.context).final_call for t in tasks]

    assert calls(greedy, 1) == calls(greedy, 2)
    assert calls(warm, 1) != calls(warm, 2)


def test_planner_is_good_but_imperfect_on_unseen_phrasings(home):
    tasks = [t for t in generate_tasks(seed=0, n_train=0, n_dev=0, n_test=120)]
    model = make_chat_model("planner")
    exact = [compare_calls(run_request(home, model, t.input, t.context).final_call, t.gold)["exact"] for t in tasks]
    rate = sum(exact) / len(exact)
    assert 0.7 <= rate < 1.0


def test_the_model_never_sees_the_gold_answer(home):
    task = generate_tasks(seed=0, n_train=1, n_dev=0, n_test=0)[0]
    model = ScriptedChatModel(script=[AIMessage(content="no idea")])
    run_request(home, model, task.input, task.context)
    sent = json.dumps([m.content for m in model.seen[0]])
    for value in task.gold["arguments"].values():
        if isinstance(value, str) and value.lower() not in task.input.lower():
            assert value not in sent


def test_tool_errors_go_back_to_the_model_and_are_recorded(home):
    script = [
        AIMessage(content="", tool_calls=[
            tool_call("no_such_tool", {}, "a"),
            tool_call("resolve_duration", {"expression": "whenever"}, "b"),
            tool_call("find_city", {"wrong_arg": "x"}, "c"),
        ]),
        AIMessage(content="", tool_calls=[tool_call("set_timer", {"duration": "PT5M"}, "d")]),
    ]
    model = ScriptedChatModel(script=script)
    result = run_request(home, model, "set a timer", CONTEXT)
    assert result.status == "ok" and result.final_call == {"name": "set_timer", "arguments": {"duration": "PT5M"}}
    errors = {e["name"]: e["error"] for e in result.tool_events}
    assert "unknown tool 'no_such_tool'" in errors["no_such_tool"]
    assert "no duration found" in errors["resolve_duration"]
    assert "invalid arguments for find_city" in errors["find_city"]
    second_prompt = model.seen[1]
    tool_messages = [m for m in second_prompt if isinstance(m, ToolMessage)]
    assert len(tool_messages) == 3 and all(m.status == "error" for m in tool_messages)


def test_malformed_tool_call_json_is_returned_as_an_error(home):
    bad = AIMessage(content="", invalid_tool_calls=[
        {"name": "find_city", "args": "{not json", "id": "x", "error": "bad json", "type": "invalid_tool_call"}])
    model = ScriptedChatModel(script=[bad, AIMessage(content="", tool_calls=[tool_call("set_timer", {"duration": "PT1M"}, "y")])])
    result = run_request(home, model, "timer", CONTEXT)
    assert result.status == "ok"
    assert "malformed tool call" in result.tool_events[0]["error"]


def test_invalid_action_arguments_go_back_to_the_model(home):
    model = ScriptedChatModel(script=[
        AIMessage(content="", tool_calls=[tool_call("control_device", {"device_id": "light.kitchen", "action": "explode"}, "a")]),
        AIMessage(content="", tool_calls=[tool_call("control_device", {"device_id": "light.kitchen", "action": "off"}, "b")]),
    ])
    result = run_request(home, model, "kitchen lights off", CONTEXT)
    assert result.status == "ok" and result.final_call["arguments"]["action"] == "off"
    assert result.model_calls == 2 and "invalid arguments" in result.tool_events[0]["error"]


def test_step_budget_ends_the_run_cleanly(home):
    loop = [AIMessage(content="", tool_calls=[tool_call("find_city", {"name": "paris"}, f"c{i}")]) for i in range(10)]
    result = run_request(home, ScriptedChatModel(script=loop), "weather", CONTEXT, max_model_calls=3)
    assert result.status == "budget_exhausted" and result.model_calls == 3 and result.final_call is None
    assert len(result.tool_events) == 3


def test_no_tool_call_and_model_failure_are_statuses_not_crashes(home):
    assert run_request(home, ScriptedChatModel(script=[AIMessage(content="hi")]), "hello", CONTEXT).status == "no_call"

    class Exploding(ScriptedChatModel):
        def _generate(self, *args, **kwargs):
            raise ConnectionError("endpoint down")

    result = run_request(home, Exploding(), "hello", CONTEXT)
    assert result.status == "error" and "endpoint down" in result.error
    assert [m["role"] for m in result.messages] == ["system", "user"]


def test_an_async_graph_runs_tools_on_tool_threads_not_on_the_event_loop():
    """A user's tool may block (an HTTP lookup): in a batch job it must not stall the other
    samples on the loop, even when the loop's default executor runs work in place."""
    from agent.batch import _InlineExecutor

    ran_on = []

    def where(room: str) -> str:
        """Where a tool runs.

        Args:
            room: any room.
        """
        ran_on.append(threading.current_thread())
        return "here"

    def done(room: str) -> str:
        """The action.

        Args:
            room: the room.
        """
        return "ok"

    domain = Domain(name="probe", system_prompt="Call where, then done.", lookup_functions=[where],
                    action_functions=[done])
    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("where", {"room": "hall"}, "a")]),
                                      AIMessage(content="", tool_calls=[tool_call("done", {"room": "hall"}, "b")])])

    async def main():
        asyncio.get_running_loop().set_default_executor(_InlineExecutor())
        graph = build_agent(domain, model, asynchronous=True)
        return await arun_request(domain, graph, "hall", {}), threading.current_thread()

    result, loop_thread = asyncio.run(main())
    assert result.status == "ok" and result.tool_events[0]["result"] == "here"
    assert ran_on[0] is not loop_thread and ran_on[0].name.startswith("supertiny-tools")
