"""``supertiny agent chat``: an interactive step-debugger for the teacher agent.

Type a request and watch the teacher graph (``agent.graph``) work, each step rendered by
``agent.render`` exactly as ``agent run`` renders it. Every step is a LangGraph checkpoint kept
by a ``SqliteSaver`` in its own SQLite file (``checkpoints.db`` next to the supertiny db), which
is what lets a session pause, change what the model asked for, go back and try again.

Words used here:

- branch: one LangGraph thread. A request starts a new branch; ``:rewind N`` copies steps 0..N
  of the current branch into a new thread and continues there. So every branch is a complete,
  linear history from its request on, and a stored trace's ``thread_id`` names exactly one.
- step: one checkpoint of a branch, numbered from 0 (the request) as ``:history`` shows them.
- pause: in step mode the graph is interrupted before ``run_tools`` and ``submit_action``, the
  nodes that act on tool calls; the pending calls can then be run, edited, answered or skipped.

:class:`DebugSession` is the logic and needs no terminal (tests drive it directly);
:class:`DebuggerShell` reads command lines and prints.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, convert_to_openai_messages
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import StateSnapshot
from rich.console import Console
from rich.markup import escape

from agent.backends import make_chat_model
from agent.graph import DEFAULT_MAX_MODEL_CALLS, build_agent, tool_event
from agent.render import (
    call_text, message_line, render_divergence, render_messages, render_outcome, render_pending_calls, render_table,
    render_update,
)
from agent.run import context_for_request, trace_from_state
from dataengine.schema import TraceRow
from dataengine.store import Store
from supertiny.errors import UserError
from tools.registry import Domain

PAUSE_BEFORE = ("run_tools", "submit_action")  # step mode stops before every node that acts on tool calls
SKIPPED_BY_USER = "skipped by user"


# ---- checkpoints -------------------------------------------------------------------------------


def open_checkpointer(path: Path) -> SqliteSaver:
    """A ``SqliteSaver`` on ``path``, created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # LangGraph writes checkpoints from a background thread; the saver serialises access itself.
    return SqliteSaver(sqlite3.connect(path, check_same_thread=False))


def copy_steps(checkpointer: SqliteSaver, head: RunnableConfig, thread_id: str) -> None:
    """Copy the checkpoint ``head`` and all its ancestors, oldest first, into the thread ``thread_id``.

    Only checkpoints are copied, not their pending writes: those are what ran after ``head`` on
    the old branch, and the new branch must run it again."""
    chain = []
    checkpoint = checkpointer.get_tuple(head)
    while checkpoint is not None:
        chain.append(checkpoint)
        checkpoint = checkpointer.get_tuple(checkpoint.parent_config) if checkpoint.parent_config else None
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    for checkpoint in reversed(chain):
        config = checkpointer.put(config, checkpoint.checkpoint, checkpoint.metadata,
                                  checkpoint.checkpoint["channel_versions"])


# ---- comparing a replay with a stored trace ----------------------------------------------------


@dataclass
class Turn:
    """One model call of a run (OpenAI-format messages) and what the tools answered it."""

    calls: list[tuple[str, Any]]  # (tool name, arguments)
    text: str
    results: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(call_text(name, args) for name, args in self.calls) or f"text: {self.text}"


@dataclass
class Divergence:
    """Where two runs first differ: ``step`` is the 1-based model call, None when they agree."""

    step: int | None
    reason: str
    stored: str = ""
    replayed: str = ""


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def _arguments(raw: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return raw  # a malformed call is compared as the text the model wrote


def conversation_turns(messages: list[dict[str, Any]]) -> list[Turn]:
    """Split OpenAI-format messages into model calls with their tool results."""
    turns: list[Turn] = []
    for message in messages:
        if message.get("role") == "assistant":
            calls = [(c["function"]["name"], _arguments(c["function"]["arguments"]))
                     for c in message.get("tool_calls") or []]
            turns.append(Turn(calls, _text(message.get("content"))))
        elif message.get("role") == "tool" and turns:
            turns[-1].results.append(_text(message.get("content")))
    return turns


def first_divergence(stored: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> Divergence:
    """The first model call where ``replayed`` differs from ``stored``: in the tools it called, their
    arguments, the text it answered instead, or what the tools returned."""
    old, new = conversation_turns(stored), conversation_turns(replayed)
    for number, (a, b) in enumerate(zip(old, new), start=1):
        if a.calls != b.calls:
            same_tools = [name for name, _ in a.calls] == [name for name, _ in b.calls]
            reason = "same tools, different arguments" if same_tools else "the model called different tools"
            return Divergence(number, reason, a.describe(), b.describe())
        if not a.calls and a.text != b.text:
            return Divergence(number, "the model answered with different text", a.describe(), b.describe())
        if a.results != b.results:
            return Divergence(number, "the tools returned different results",
                              "\n".join(a.results), "\n".join(b.results))
    if len(old) != len(new):
        number = min(len(old), len(new)) + 1
        ended = "(no model call: the run had ended)"
        return Divergence(number, "one run made more model calls",
                          old[number - 1].describe() if len(old) >= number else ended,
                          new[number - 1].describe() if len(new) >= number else ended)
    return Divergence(None, f"{len(old)} model calls with the same tool calls and results")


# ---- the session -------------------------------------------------------------------------------


@dataclass
class Branch:
    name: str  # b1, b2, ... in this session
    thread_id: str  # the LangGraph thread holding its checkpoints
    request: str
    context: dict[str, Any]
    origin: str  # "request", "b1@3" (rewound from b1's step 3) or "trace 7" (a replay)
    parent_trace_id: int | None = None  # the stored trace it came from (replayed, or a saved branch rewound)
    saved_trace_ids: list[int] = field(default_factory=list)
    error: str | None = None  # why the last run stopped (a failed model call), until a run succeeds


@dataclass
class Step:
    number: int
    by: str  # "request", the node that ran, or "you" (an edit or an answer)
    what: str
    next: tuple[str, ...]
    config: RunnableConfig  # the checkpoint, for :rewind


@dataclass
class Answer:
    """What the user decided for a pending call instead of running it."""

    skipped: bool
    result: Any = None

    def describe(self) -> str:
        return SKIPPED_BY_USER if self.skipped else f"your result: {json.dumps(self.result, ensure_ascii=False)[:80]}"


def _step_by(previous: StateSnapshot | None, snapshot: StateSnapshot) -> str:
    if previous is None:
        return "request"
    if snapshot.metadata.get("source") == "update":
        return "you"
    return ", ".join(previous.next) or "?"


def _step_what(previous: StateSnapshot | None, snapshot: StateSnapshot) -> str:
    """What a step changed: messages it added or replaced, and a status it set."""
    before = {m.id: m for m in previous.values.get("messages", [])} if previous else {}
    parts = []
    for message in snapshot.values.get("messages", []):
        if previous is None and isinstance(message, SystemMessage):
            continue  # the same system prompt starts every branch
        if message.id not in before:
            parts.append(message_line(message))
        elif message != before[message.id]:
            parts.append(f"edited {message_line(message)}")
    status = snapshot.values.get("status")
    if previous is not None and status != previous.values.get("status") and status != "running":
        parts.append(f"status {status}")
    what = " · ".join(" ".join(part.split()) for part in parts)
    return what if len(what) <= 140 else what[:139] + "…"


class DebugSession:
    """A compiled teacher graph over a SQLite checkpointer, the branches made so far and the current one.

    Methods raise :class:`UserError` for what the user got wrong. The graph's updates go to
    ``on_update(node, update)`` as they happen, and each new branch to ``on_branch``."""

    def __init__(self, domain: Domain, store: Store, checkpointer: SqliteSaver, *, model: str = "planner",
                 temperature: float = 0.0, seed: int = 0, max_model_calls: int = DEFAULT_MAX_MODEL_CALLS,
                 model_options: dict[str, Any] | None = None, now: datetime | None = None,
                 context: dict[str, Any] | None = None):
        self.domain, self.store, self.checkpointer = domain, store, checkpointer
        self.seed, self.max_model_calls = seed, max_model_calls
        # What each request runs with, as agent.run.context_for_request combines them: with no ``now``,
        # the minute the request is typed.
        self.now, self.context = now, context
        self.model_options = model_options or {}
        # What the session does, as it happens; the shell renders it (tests may leave it quiet).
        self.on_update: Callable[[str, dict[str, Any]], None] = lambda node, update: None
        self.on_branch: Callable[[Branch], None] = lambda branch: None
        self.step_mode = False
        self.branches: list[Branch] = []
        self.current: Branch | None = None
        self.answers: dict[str, Answer] = {}  # pending call id -> the user's answer
        self.session_id = uuid.uuid4().hex[:8]
        self.graph = self._compile(model, temperature)
        self.model, self.temperature = model, temperature

    def _compile(self, model: str, temperature: float):
        chat = make_chat_model(model, domain=self.domain, temperature=temperature, seed=self.seed,
                               **self.model_options)
        return build_agent(self.domain, chat, max_model_calls=self.max_model_calls, checkpointer=self.checkpointer)

    def close(self) -> None:
        self.checkpointer.conn.close()

    # -- where we are ------------------------------------------------------------------------

    def branch(self) -> Branch:
        if self.current is None:
            raise UserError("no request yet: type one, e.g. 'turn on the lamp in the bedroom'")
        return self.current

    def config(self, branch: Branch | None = None) -> RunnableConfig:
        branch = branch or self.branch()
        return {"configurable": {"thread_id": branch.thread_id, "seed": self.seed},
                "recursion_limit": 4 * self.max_model_calls + 10}

    def snapshot(self, branch: Branch | None = None) -> StateSnapshot:
        return self.graph.get_state(self.config(branch))

    def paused_before(self) -> str | None:
        """The node a pause holds (run_tools or submit_action), or None when not paused."""
        if self.current is None:
            return None
        upcoming = self.snapshot().next
        return upcoming[0] if upcoming and upcoming[0] in PAUSE_BEFORE else None

    def pending_calls(self) -> list[dict[str, Any]]:
        if self.paused_before() is None:
            return []
        return list(self.snapshot().values["messages"][-1].tool_calls)

    def status(self, branch: Branch | None = None) -> str:
        snapshot = self.snapshot(branch)
        if snapshot.next:
            verb = "paused" if snapshot.next[0] in PAUSE_BEFORE else "stopped"
            return f"{verb} before {snapshot.next[0]}"
        return snapshot.values.get("status", "?")

    def steps(self, branch: Branch | None = None) -> list[Step]:
        """The branch's checkpoints, oldest first. The input checkpoint LangGraph writes before the
        first node holds no state yet, so numbering starts at the request."""
        history = [s for s in reversed(list(self.graph.get_state_history(self.config(branch))))
                   if s.metadata.get("source") != "input"]
        steps, previous = [], None
        for number, snapshot in enumerate(history):
            steps.append(Step(number, _step_by(previous, snapshot), _step_what(previous, snapshot),
                              snapshot.next, snapshot.config))
            previous = snapshot
        return steps

    # -- running -----------------------------------------------------------------------------

    def _new_branch(self, request: str, context: dict[str, Any], origin: str,
                    parent_trace_id: int | None = None) -> Branch:
        number = len(self.branches) + 1
        branch = Branch(f"b{number}", f"chat-{self.session_id}-{number}", request, context, origin, parent_trace_id)
        self.branches.append(branch)
        self.current = branch
        self.answers.clear()
        self.on_branch(branch)
        return branch

    def _stream(self, graph_input: dict[str, Any] | None, *, pause: bool) -> None:
        branch = self.branch()
        self.answers.clear()
        try:
            for chunk in self.graph.stream(graph_input, self.config(), stream_mode="updates",
                                           interrupt_before=list(PAUSE_BEFORE) if pause else None):
                for node, update in chunk.items():
                    if node != "__interrupt__":
                        self.on_update(node, update or {})
        except Exception as exc:  # the branch keeps its last checkpoint; :run retries from there
            branch.error = f"{type(exc).__name__}: {exc}"
            raise
        branch.error = None

    def _start(self, request: str, context: dict[str, Any], origin: str, parent_trace_id: int | None,
               pause: bool) -> Branch:
        branch = self._new_branch(request, context, origin, parent_trace_id)
        state = {"messages": [SystemMessage(self.domain.system_prompt),
                              HumanMessage(self.domain.render_request(request, context))],
                 "model_calls": 0, "final_call": None, "status": "running", "tool_events": []}
        self._stream(state, pause=pause)
        return branch

    def start(self, request: str) -> Branch:
        """Run a new request on a new branch (pausing before tool calls in step mode)."""
        return self._start(request, context_for_request(self.now, self.context), "request", None, self.step_mode)

    def run(self) -> None:
        """Continue the current branch: run the pending calls (with the user's answers) and go on."""
        branch, snapshot = self.branch(), self.snapshot()
        if not snapshot.next:
            raise UserError(f"nothing to run: {branch.name} has finished ({snapshot.values.get('status')}); "
                            "type a request, or :rewind N")
        if self.answers:
            self._apply_answers(snapshot)
        self._stream(None, pause=self.step_mode)

    # -- changing a pending call -------------------------------------------------------------

    def _pending_call(self, number: int | None, *, answerable: bool = False) -> tuple[int, dict[str, Any]]:
        node = self.paused_before()
        if node is None:
            raise UserError("no pending tool call: :step on pauses before tool calls")
        if answerable and node == "submit_action":
            raise UserError("the pending call is the final action, which is the answer itself: "
                            ":edit its arguments or :run it")
        calls = self.pending_calls()
        number = number or 1
        if not 1 <= number <= len(calls):
            raise UserError(f"no pending call {number}: calls are numbered 1-{len(calls)}")
        return number, calls[number - 1]

    def edit(self, number: int | None, args: dict[str, Any]) -> dict[str, Any]:
        """Replace the arguments of pending call ``number`` (default 1). Returns the edited call."""
        number, call = self._pending_call(number)
        last: AIMessage = self.snapshot().values["messages"][-1]
        calls = [{**c, "args": args} if c["id"] == call["id"] else c for c in last.tool_calls]
        # The provider's raw copy of the calls would contradict the edit; tool_calls is what is sent.
        extra = {k: v for k, v in last.additional_kwargs.items() if k != "tool_calls"}
        # Same message id, so add_messages replaces the model's message rather than appending one;
        # as call_model, so the graph routes from it as it would from the model's own message.
        edited = last.model_copy(update={"tool_calls": calls, "additional_kwargs": extra})
        self.graph.update_state(self.config(), {"messages": [edited]}, as_node="call_model")
        return calls[number - 1]

    def answer(self, number: int | None, result: Any) -> bool:
        """Use ``result`` as call ``number``'s result instead of running it. Returns True when that
        answered every pending call: then the turn is applied and the run goes on."""
        _, call = self._pending_call(number, answerable=True)
        self.answers[call["id"]] = Answer(skipped=False, result=result)
        return self._run_if_all_answered()

    def skip(self, number: int | None) -> bool:
        """Do not run call ``number``: the model is told it was skipped. Returns as :meth:`answer`."""
        _, call = self._pending_call(number, answerable=True)
        self.answers[call["id"]] = Answer(skipped=True)
        return self._run_if_all_answered()

    def _run_if_all_answered(self) -> bool:
        if any(call["id"] not in self.answers for call in self.pending_calls()):
            return False
        self.run()
        return True

    def _apply_answers(self, snapshot: StateSnapshot) -> None:
        """Write the pending turn's tool messages as ``run_tools`` would: the graph's own node runs the
        calls nobody answered, the user's answers fill in the rest."""
        last: AIMessage = snapshot.values["messages"][-1]
        unanswered = [c for c in last.tool_calls if c["id"] not in self.answers]
        ran: dict[str, list] = {"messages": [], "tool_events": []}
        if unanswered or last.invalid_tool_calls:
            subset = last.model_copy(update={"tool_calls": unanswered})
            run_tools = self.graph.builder.nodes["run_tools"].runnable
            ran = run_tools.invoke({**snapshot.values, "messages": [*snapshot.values["messages"][:-1], subset]})
        messages, events = list(ran["messages"]), list(ran["tool_events"])
        step = snapshot.values.get("model_calls", 0)
        for call in last.tool_calls:
            answer = self.answers.get(call["id"])
            if answer is None:
                continue
            if answer.skipped:
                messages.append(ToolMessage(content=SKIPPED_BY_USER, tool_call_id=call["id"], name=call["name"],
                                            status="error"))
                events.append(tool_event(step, call["name"], call["args"], error=SKIPPED_BY_USER))
            else:
                result = answer.result
                content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
                messages.append(ToolMessage(content=content, tool_call_id=call["id"], name=call["name"]))
                events.append(tool_event(step, call["name"], call["args"], result=answer.result))
        update = {"messages": messages, "tool_events": events}
        self.graph.update_state(self.config(), update, as_node="run_tools")
        self.answers.clear()
        self.on_update("run_tools", update)

    # -- branches ----------------------------------------------------------------------------

    def rewind(self, number: int) -> Branch:
        """Copy steps 0..``number`` of the current branch into a new branch and continue from there.
        In step mode a step that is about to run tools stays paused, so its calls can be changed."""
        source = self.branch()
        steps = self.steps()
        if not 0 <= number < len(steps):
            raise UserError(f"no step {number}: {source.name} has steps 0-{len(steps) - 1} (see :history)")
        parent_trace = source.saved_trace_ids[-1] if source.saved_trace_ids else source.parent_trace_id
        branch = self._new_branch(source.request, source.context, f"{source.name}@{number}", parent_trace)
        copy_steps(self.checkpointer, steps[number].config, branch.thread_id)
        upcoming = self.snapshot().next
        if upcoming and not (self.step_mode and upcoming[0] in PAUSE_BEFORE):
            self._stream(None, pause=self.step_mode)
        return branch

    def save(self, label: str | None = None, note: str | None = None) -> int:
        """Store the current branch as a trace; returns its id.

        A branch stopped by a failed model call is stored with status ``error``, any other
        unfinished one with status ``incomplete``. Latency is what the model calls and tools took
        (``trace_from_state``'s default), not wall-clock time, which would count the person
        thinking at the prompt."""
        branch, snapshot = self.branch(), self.snapshot()
        finished = not snapshot.next
        status = snapshot.values.get("status", "running") if finished else "error" if branch.error else "incomplete"
        result = trace_from_state(snapshot.values, error=branch.error, status=status)
        trace_id = self.store.add_trace(result, domain=self.domain.name, model=self.model, input=branch.request,
                                        context=branch.context, label=label, note=note,
                                        parent_trace_id=branch.parent_trace_id, thread_id=branch.thread_id)
        branch.saved_trace_ids.append(trace_id)
        return trace_id

    def replay(self, trace_id: int) -> tuple[TraceRow, Divergence]:
        """Re-run a stored trace's request and context on a new branch with the current model and
        tools, straight through, and find where the new run diverges from the stored one."""
        trace = self.store.trace(trace_id)
        if trace.domain != self.domain.name:
            raise UserError(f"trace {trace_id} is from domain {trace.domain!r}; "
                            f"start `supertiny agent chat --domain {trace.domain}` to replay it")
        self._start(trace.input, trace.context, f"trace {trace_id}", trace_id, pause=False)
        replayed = convert_to_openai_messages(self.snapshot().values["messages"])
        return trace, first_divergence(trace.messages, replayed)

    # -- the model ---------------------------------------------------------------------------

    def set_model(self, model: str) -> None:
        """Switch backend; the checkpointer, and so every branch's conversation, stays."""
        self.graph = self._compile(model, self.temperature)
        self.model = model

    def set_temperature(self, temperature: float) -> None:
        self.graph = self._compile(self.model, temperature)
        self.temperature = temperature


# ---- the shell ---------------------------------------------------------------------------------


def _leading_number(text: str) -> tuple[int | None, str]:
    """``"2 rest"`` -> (2, "rest"); a number alone is not taken as N, since it may be the text."""
    head, _, rest = text.partition(" ")
    if head.isdigit() and rest.strip():
        return int(head), rest.strip()
    return None, text


def parse_arguments(text: str) -> dict[str, Any]:
    """Tool arguments typed at the prompt: a JSON object."""
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc.msg} at column {exc.colno}); nothing changed") from None
    if not isinstance(args, dict):
        raise UserError('tool arguments must be a JSON object, e.g. {"room": "kitchen"}; nothing changed')
    return args


def parse_result(text: str) -> Any:
    """A tool result typed at the prompt: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def enable_line_editing() -> None:
    """Give ``input()`` arrow keys and history where GNU readline exists (importing it is enough)."""
    try:
        import readline  # noqa: F401
    except ImportError:
        pass


@dataclass
class Command:
    usage: str
    help: str
    run: Callable[["DebuggerShell", str], None]


class DebuggerShell:
    """The prompt: a line not starting with ':' is a request, anything else a command. A command
    that fails prints one line and the prompt comes back."""

    def __init__(self, session: DebugSession, console: Console, *, checkpoints: Path | None = None):
        self.session, self.console, self.checkpoints = session, console, checkpoints
        session.on_update = partial(render_update, console)  # the same step rendering as `agent run`
        session.on_branch = self.announce_branch

    def announce_branch(self, branch: Branch) -> None:
        self.console.print(f"[dim]{branch.name} · from {escape(branch.origin)} · thread {branch.thread_id}[/]",
                           highlight=False)

    def prompt(self) -> str:
        session = self.session
        if session.current is None:
            return "supertiny> "
        name = session.current.name
        paused = session.paused_before()
        if paused == "run_tools":
            return f"{name} paused [:run :edit :result :skip]> "
        if paused == "submit_action":
            return f"{name} paused [:run :edit]> "
        if session.snapshot().next:
            return f"{name} stopped [:run]> "
        return f"supertiny {name}> "

    def loop(self, read_line: Callable[[str], str] = input) -> None:
        """Read and run lines until :quit or end of input."""
        session = self.session
        where = f" · checkpoints {self.checkpoints}" if self.checkpoints else ""
        self.console.print(f"[bold]supertiny agent chat[/] · domain {session.domain.name} · "
                           f"model {escape(session.model)} (temperature {session.temperature}){escape(where)}\n"
                           "Type a request, or :help for commands.", highlight=False)
        while True:
            try:
                line = read_line(self.prompt())
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print("\n(:quit or Ctrl-D leaves)")
                continue
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Run one line; False means quit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith(":"):
            self._guarded(self.request, line)
            return True
        name, _, rest = line.partition(" ")
        if name in (":quit", ":q", ":exit"):
            return False
        command = COMMANDS.get(name)
        if command is None:
            self.error(f"unknown command {name}: :help lists them")
        else:
            self._guarded(command.run, self, rest.strip())
        return True

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except UserError as exc:
            self.error(str(exc))
        except KeyboardInterrupt:
            self.error("interrupted: the branch keeps its last step; :run continues")
        except Exception as exc:  # a failing endpoint or tool must not end the session
            self.error(f"{type(exc).__name__}: {exc}")

    def error(self, message: str) -> None:
        one_line = " ".join(message.split())
        self.console.print(f"[bold red]error:[/] {escape(one_line[:400])}", highlight=False, soft_wrap=True)

    def show_position(self) -> None:
        """After anything that moved the branch: the pending calls, a stop, or the outcome."""
        session, branch = self.session, self.session.branch()
        paused = session.paused_before()
        if paused:
            answers = {call_id: answer.describe() for call_id, answer in session.answers.items()}
            render_pending_calls(self.console, paused, session.pending_calls(), answers)
        elif session.snapshot().next:
            self.console.print(f"{branch.name} {session.status()}: :run continues", highlight=False)
        else:
            render_outcome(self.console, branch.name, session.snapshot().values)

    # -- commands ----------------------------------------------------------------------------

    def request(self, text: str) -> None:
        self.session.start(text)
        self.show_position()

    def help(self, _: str) -> None:
        rows = [["<request>", "run a new request on a new branch"]]
        rows += [[command.usage, command.help] for command in COMMANDS.values()]
        rows += [[":quit", "leave (also Ctrl-D)"]]
        render_table(self.console, "commands", ["command", "what it does"], rows)

    def step(self, rest: str) -> None:
        if rest not in ("on", "off"):
            raise UserError("usage: :step on|off")
        self.session.step_mode = rest == "on"
        if self.session.step_mode:
            self.console.print("step mode on: the agent pauses before every tool call")
        else:
            self.console.print("step mode off: runs go to the end (:run continues a paused one)")

    def run(self, _: str) -> None:
        self.session.run()
        self.show_position()

    def edit(self, rest: str) -> None:
        number, text = _leading_number(rest)
        if not text:
            raise UserError('usage: :edit [N] {"argument": "value", ...}')
        call = self.session.edit(number, parse_arguments(text))
        self.console.print(f"edited call {number or 1}: {escape(call_text(call['name'], call['args']))}",
                           highlight=False)
        self.show_position()

    def result(self, rest: str) -> None:
        number, text = _leading_number(rest)
        if not text:
            raise UserError("usage: :result [N] <text or JSON>")
        self._after_answer(self.session.answer(number, parse_result(text)))

    def skip(self, rest: str) -> None:
        if rest and not rest.isdigit():
            raise UserError("usage: :skip [N]")
        self._after_answer(self.session.skip(int(rest) if rest else None))

    def _after_answer(self, applied: bool) -> None:
        if not applied:
            waiting = sum(1 for call in self.session.pending_calls() if call["id"] not in self.session.answers)
            them = "them" if waiting != 1 else "it"
            self.console.print(f"noted; {waiting} call{'s' if waiting != 1 else ''} still to decide: "
                               f":run runs {them}, or :result / :skip {them}")
        self.show_position()

    def state(self, _: str) -> None:
        branch, snapshot = self.session.branch(), self.session.snapshot()
        self.console.print(f"[bold]{branch.name}[/] · thread {branch.thread_id} · from {escape(branch.origin)}",
                           highlight=False)
        render_messages(self.console, snapshot.values.get("messages", []), snapshot.values, snapshot.next)

    def history(self, _: str) -> None:
        branch = self.session.branch()
        rows = [[str(s.number), s.by, s.what, ", ".join(s.next) or "(end)"] for s in self.session.steps()]
        render_table(self.console, f"{branch.name} · thread {branch.thread_id}", ["step", "by", "what", "next"], rows)

    def rewind(self, rest: str) -> None:
        if not rest.isdigit():
            raise UserError("usage: :rewind N (a step number from :history)")
        self.session.rewind(int(rest))
        self.show_position()

    def branches(self, _: str) -> None:
        session = self.session
        rows = [["*" if b is session.current else "", b.name, b.origin, str(len(session.steps(b))), session.status(b),
                 ", ".join(map(str, b.saved_trace_ids)), b.thread_id] for b in session.branches]
        render_table(self.console, f"{len(rows)} branch{'es' if len(rows) != 1 else ''}",
                     ["", "branch", "from", "steps", "status", "saved traces", "thread"], rows)

    def save(self, rest: str) -> None:
        label, _, note = rest.partition("--")
        trace_id = self.session.save(label.strip() or None, note.strip() or None)
        branch = self.session.branch()
        self.console.print(f"saved trace {trace_id} ({branch.name}, {self.session.status()}, "
                           f"thread {branch.thread_id})",
                           highlight=False)

    def replay(self, rest: str) -> None:
        if not rest.isdigit():
            raise UserError("usage: :replay TRACE_ID")
        trace, divergence = self.session.replay(int(rest))
        branch, values = self.session.branch(), self.session.snapshot().values
        rows = [(f"step {divergence.step}", divergence.stored, divergence.replayed)] if divergence.step else []
        finals = [call_text(call["name"], call["arguments"]) if call else "none"
                  for call in (trace.final_call, values.get("final_call"))]
        rows += [("final call", *finals), ("status", trace.status, str(values.get("status")))]
        render_divergence(self.console, divergence.step, divergence.reason,
                          (f"trace {trace.id} (stored, {trace.model})",
                           f"{branch.name} (replay, {self.session.model} at temperature {self.session.temperature})"),
                          rows)

    def model(self, rest: str) -> None:
        if not rest:
            raise UserError("usage: :model SPEC ('planner' or 'openai:<model>')")
        self.session.set_model(rest)
        self.console.print(f"model {escape(rest)} (temperature {self.session.temperature}); the conversation stays",
                           highlight=False)

    def temperature(self, rest: str) -> None:
        try:
            value = float(rest)
        except ValueError:
            raise UserError("usage: :temperature T (a number, 0 is greedy)") from None
        self.session.set_temperature(value)
        self.console.print(f"temperature {value} ({escape(self.session.model)}); the conversation stays",
                           highlight=False)


COMMANDS: dict[str, Command] = {
    ":help": Command(":help", "this list", DebuggerShell.help),
    ":step": Command(":step on|off", "pause before every tool call (off: runs go to the end)", DebuggerShell.step),
    ":run": Command(":run", "run the pending tool call(s) and continue", DebuggerShell.run),
    ":edit": Command(":edit [N] {json}", "replace the arguments of pending call N (default 1)", DebuggerShell.edit),
    ":result": Command(":result [N] <text|json>", "do not run call N: use this as its result", DebuggerShell.result),
    ":skip": Command(":skip [N]", 'do not run call N: the model is told "skipped by user"', DebuggerShell.skip),
    ":state": Command(":state", "the current branch's messages and state", DebuggerShell.state),
    ":history": Command(":history", "numbered steps (checkpoints) of the current branch", DebuggerShell.history),
    ":rewind": Command(":rewind N", "go back to step N on a new branch and continue from there", DebuggerShell.rewind),
    ":branches": Command(":branches", "all branches of this session: origin, steps, status", DebuggerShell.branches),
    ":save": Command(":save [label] [-- note]", "store the current branch as a trace; prints its id",
                     DebuggerShell.save),
    ":replay": Command(":replay TRACE_ID", "re-run a stored trace's request; show where it diverges",
                       DebuggerShell.replay),
    ":model": Command(":model SPEC", "switch backend (planner, openai:<model>); the conversation stays",
                      DebuggerShell.model),
    ":temperature": Command(":temperature T", "switch sampling temperature; the conversation stays",
                            DebuggerShell.temperature),
}
