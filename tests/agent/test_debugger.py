"""``supertiny agent chat``: first as a person uses it (the real CLI on a pseudo-terminal, keys
typed, the screen read back), then the session logic directly, without a terminal."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import sys
from datetime import datetime

import pytest
from langchain_core.messages import ToolMessage
from rich.console import Console

from agent.debugger import (
    SKIPPED_BY_USER, DebuggerShell, DebugSession, first_divergence, open_checkpointer, parse_arguments,
)
from agent.graph import build_agent
from supertiny.errors import UserError
from tests.conftest import ScriptedChatModel
from tests.terminal import Terminal
from tools.registry import get_domain


@pytest.fixture
def terminal(tmp_path):
    term = Terminal([sys.executable, "-m", "supertiny.cli", "--db", str(tmp_path / "supertiny.db"),
                     "agent", "chat", "--model", "planner", "--now", "2026-03-14T09:30"])
    yield term
    term.close()


def printed_lines(output: str) -> list[str]:
    """What a command printed, without the prompt that follows it."""
    return [line for line in output.splitlines()[:-1] if line.strip()]


def test_a_debugging_session_at_the_terminal(terminal, tmp_path):
    terminal.expect("Type a request")
    shown = terminal.command(":help", ":step on|off", ":edit [N] {json}", ":rewind N", ":replay TRACE_ID", ":quit")
    assert "pause before every tool call" in shown

    terminal.command(":step on", "step mode on")
    shown = terminal.command("turn on the lamp in the bedroom", "paused before run_tools")
    assert 'find_device({"room": "bedroom", "device_type": "lamp"})' in shown
    assert shown.endswith("b1 paused [:run :edit :result :skip]> ")

    shown = terminal.command(':edit {"room": living room}', "error: invalid JSON")
    assert len(printed_lines(shown)) == 1 and shown.endswith("paused [:run :edit :result :skip]> ")
    shown = terminal.command(':edit 1 {"room": "living room", "device_type": "lamp"}', "edited call 1")
    assert '1 find_device({"room": "living room", "device_type": "lamp"})' in shown

    shown = terminal.command(":run", "paused before submit_action")
    assert "✓ find_device" in shown and "light.living_room" in shown and "model call 2" in shown
    shown = terminal.command(":run", "b1 finished: ok")
    assert 'control_device({"device_id": "light.living_room", "action": "on"})' in shown

    history = terminal.command(":history", "submit_action")
    assert re.search(r"\b1\s+│\s+call_model\s+│\s+→ find_device\(\{\"room\": \"bedroom\"", history), history
    assert re.search(r"\b2\s+│\s+you\s+│\s+edited → find_device", history), history

    shown = terminal.command(":save mylabel -- a note", "saved trace")
    saved_id, thread_id = re.search(r"saved trace (\d+) \(b1, ok, thread (\S+)\)", shown).groups()

    terminal.command(":step off", "step mode off")
    shown = terminal.command(":rewind 1", "b2 finished: ok")
    assert "b2 · from b1@1" in shown and "light.bedroom" in shown
    branches = terminal.command(":branches", "2 branches")
    assert re.search(r"b1\s+│\s+request\s+│\s+6\s+│\s+ok", branches), branches
    assert re.search(r"\*\s+│\s+b2\s+│\s+b1@1", branches), branches

    shown = terminal.command(f":replay {saved_id}", "diverges at step 1")
    assert "same tools, different arguments" in shown and f"trace {saved_id} (stored, planner)" in shown
    assert "b3 (replay, planner at temperature 0.0)" in shown
    shown = terminal.command(":save replayed", "saved trace")
    replay_id = re.search(r"saved trace (\d+)", shown).group(1)

    for line, message in [(":rewind 99", "error: no step 99"), (":replay 424242", "error: no trace with id 424242"),
                          (":frobnicate", "error: unknown command :frobnicate"),
                          (":result 1 x", "error: no pending tool call")]:
        shown = terminal.command(line, message)
        assert len(printed_lines(shown)) == 1, shown

    os.write(terminal.master, b"\x04")  # Ctrl-D
    assert terminal.process.wait(timeout=10) == 0

    with sqlite3.connect(tmp_path / "supertiny.db") as db:
        saved = db.execute("select label, note, thread_id, model, status, parent_trace_id from traces where id = ?",
                           (saved_id,)).fetchone()
        replayed = db.execute("select label, parent_trace_id from traces where id = ?", (replay_id,)).fetchone()
        calls = db.execute("select name, args from tool_calls where trace_id = ? order by position",
                           (saved_id,)).fetchall()
    assert saved == ("mylabel", "a note", thread_id, "planner", "ok", None)
    assert replayed == ("replayed", int(saved_id))
    assert calls == [("find_device", json.dumps({"room": "living room", "device_type": "lamp"}))]
    with sqlite3.connect(tmp_path / "checkpoints.db") as checkpoints:  # next to the supertiny db by default
        count, = checkpoints.execute("select count(*) from checkpoints where thread_id = ?", (thread_id,)).fetchone()
    assert count >= 6


# ---- the session without a terminal ------------------------------------------------------------


@pytest.fixture
def session(store, tmp_path):
    session = DebugSession(get_domain("home"), store, open_checkpointer(tmp_path / "checkpoints.db"),
                           now=datetime(2026, 3, 14, 9, 30))
    yield session
    session.close()


def run_to_end(session: DebugSession) -> dict:
    while session.snapshot().next:
        session.run()
    return session.snapshot().values


def test_skipping_one_of_two_calls_runs_the_other_and_answers_both(session):
    session.step_mode = True
    session.start("play bohemian rhapsody by queen")
    calls = session.pending_calls()
    assert [c["args"]["kind"] for c in calls] == ["song", "artist"]

    assert session.skip(2) is False  # one call is still undecided: nothing has run yet
    assert session.paused_before() == "run_tools"
    session.run()
    values = session.snapshot().values
    replies = {m.tool_call_id: m for m in values["messages"] if isinstance(m, ToolMessage)}
    assert set(replies) == {c["id"] for c in calls}
    assert replies[calls[1]["id"]].content == SKIPPED_BY_USER
    assert [(e["name"], e["error"]) for e in values["tool_events"]] == [("search_music", None),
                                                                       ("search_music", SKIPPED_BY_USER)]
    values = run_to_end(session)
    assert values["final_call"]["name"] == "play_music"


def test_a_typed_result_replaces_the_tool_and_is_stored(session, store):
    session.step_mode = True
    session.start("what is the weather in paris tomorrow")
    session.answer(1, {"city": "Lyon", "score": 1.0})
    assert session.answer(2, {"date": "2026-03-20"}) is True  # every call answered: the run went on
    values = run_to_end(session)
    assert values["final_call"] == {"name": "get_weather", "arguments": {"city": "Lyon", "date": "2026-03-20"}}
    trace_id = session.save("typed")
    rows = store.tool_calls(trace_id)
    assert [(r.name, r.result, r.latency_ms) for r in rows] == [("find_city", {"city": "Lyon", "score": 1.0}, 0.0),
                                                               ("resolve_datetime", {"date": "2026-03-20"}, 0.0)]


def test_the_final_action_can_be_edited_but_not_answered(session):
    session.step_mode = True
    session.start("turn off the kitchen lights")
    session.run()
    assert session.paused_before() == "submit_action"
    with pytest.raises(UserError, match="final action"):
        session.skip(1)
    session.edit(1, {"device_id": "light.hallway", "action": "off"})
    assert run_to_end(session)["final_call"]["arguments"]["device_id"] == "light.hallway"


def test_rewind_copies_the_steps_into_an_independent_branch(session):
    session.step_mode = True
    first = session.start("turn on the lamp in the bedroom")
    session.edit(1, {"room": "kitchen", "device_type": "lamp"})
    run_to_end(session)
    session.step_mode = False
    second = session.rewind(1)
    assert second.thread_id != first.thread_id and second.origin == "b1@1"
    assert session.snapshot().values["final_call"]["arguments"]["device_id"] == "light.bedroom"
    assert session.snapshot(first).values["final_call"]["arguments"]["device_id"] == "light.kitchen"
    assert [s.what for s in session.steps(second)][:2] == [s.what for s in session.steps(first)][:2]
    assert session.status(first) == session.status(second) == "ok"
    session.step_mode = True  # a step about to run tools stays paused on the new branch, ready to change
    session.rewind(1)
    assert session.paused_before() == "run_tools"
    assert session.pending_calls()[0]["args"] == {"room": "bedroom", "device_type": "lamp"}
    with pytest.raises(UserError, match="no step 42"):
        session.rewind(42)


def test_rewinding_a_saved_branch_links_the_new_trace_to_it(session, store):
    session.start("set a timer for 20 minutes")
    first_id = session.save()
    session.rewind(0)
    second_id = session.save(note="again")
    assert store.trace(second_id).parent_trace_id == first_id
    assert store.trace(second_id).thread_id == session.current.thread_id


def test_switching_temperature_keeps_the_paused_conversation(session):
    session.step_mode = True
    session.start("turn on the lamp in the bedroom")
    session.set_temperature(0.5)
    assert session.temperature == 0.5 and session.paused_before() == "run_tools"
    assert run_to_end(session)["status"] == "ok"
    with pytest.raises(UserError, match="unknown model"):
        session.set_model("gpt9")
    assert session.model == "planner"


def test_an_unfinished_branch_is_saved_as_incomplete(session, store):
    session.step_mode = True
    session.start("turn on the lamp in the bedroom")
    assert store.trace(session.save()).status == "incomplete"


def test_divergence_names_the_first_differing_model_call():
    def assistant(name, args):
        call = {"id": "1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    def tool(content):
        return {"role": "tool", "tool_call_id": "1", "content": content}

    stored = [{"role": "user", "content": "hi"}, assistant("find_city", {"name": "paris"}), tool("Paris"),
              assistant("get_weather", {"city": "Paris"}), tool("done")]
    assert first_divergence(stored, stored).step is None
    changed = stored[:3] + [assistant("get_weather", {"city": "Lyon"}), tool("done")]
    divergence = first_divergence(stored, changed)
    assert (divergence.step, divergence.reason) == (2, "same tools, different arguments")
    assert "Lyon" in divergence.replayed and "Paris" in divergence.stored
    other_result = stored[:2] + [tool("Paris?")] + stored[3:]
    assert first_divergence(stored, other_result).reason == "the tools returned different results"
    assert first_divergence(stored, stored[:3]).reason == "one run made more model calls"


class FailingChatModel(ScriptedChatModel):
    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        raise ConnectionError("endpoint down\nretry later")


def test_failing_commands_print_one_line_and_the_session_goes_on(session):
    screen = io.StringIO()
    shell = DebuggerShell(session, Console(file=screen, width=200))
    session.graph = build_agent(session.domain, FailingChatModel(), checkpointer=session.checkpointer)
    for line in ["turn on the lamp", ":edit {", ":step sideways", ":temperature hot", ":model gpt9", ":rewind x"]:
        screen.seek(0), screen.truncate()
        assert shell.handle(line) is True
        errors = [l for l in screen.getvalue().splitlines() if l.startswith("error:")]
        assert len(errors) == 1, (line, screen.getvalue())
    assert "ConnectionError: endpoint down retry later" in shell_output(shell, "turn on the lamp", screen)
    assert shell.prompt() == "b2 stopped [:run]> "
    stored = session.store.trace(session.save())
    assert (stored.status, stored.error) == ("error", "ConnectionError: endpoint down\nretry later")
    assert shell.handle(":quit") is False


def shell_output(shell: DebuggerShell, line: str, screen: io.StringIO) -> str:
    screen.seek(0), screen.truncate()
    shell.handle(line)
    return screen.getvalue()


def test_typed_arguments_must_be_a_json_object():
    assert parse_arguments('{"room": "kitchen"}') == {"room": "kitchen"}
    for bad in ['{"room": kitchen}', '["kitchen"]', ""]:
        with pytest.raises(UserError, match="nothing changed"):
            parse_arguments(bad)


def test_text_that_looks_like_markup_is_shown_as_typed(session):
    screen = io.StringIO()
    shell = DebuggerShell(session, Console(file=screen, width=200))
    session.step_mode = True
    shell.handle("turn on the lamp in the bedroom")
    output = shell_output(shell, ":result 1 [/oops] [bold]not bold", screen)
    assert "error:" not in output and '"[/oops] [bold]not bold"' in output
