"""Manual review in the terminal: ``supertiny traces review``.

A person steps through traces and decides. Each decision is a ``scores`` row, scorer
``review``: value 1 (accepted) or 0 (rejected), details ``{"decision", "note", "final_call"
(only when the answer was edited), "original_final_call", "provenance"}``. Editing an answer
accepts the trace with the typed answer, validated against the domain's action schema.

What the decisions change (``dataengine/curate.py``): ``dataset build`` drops rejected traces,
lets accepted ones pass whatever the automatic scorers said, and freezes edited answers into
the new version's spec (``edited_final_calls``); ``dataset export`` writes the edited answer in
place of the teacher's (both chat and direct formats). Review first, then build: a version
that already exists never changes.

:class:`ReviewSession` is the logic (testable without a terminal); :class:`ReviewShell` reads
short commands and prints with ``agent/render.py``'s helpers.
"""
from __future__ import annotations

import getpass
import json
from typing import Any, Callable, Sequence

from langchain_core.messages import convert_to_messages
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from agent.render import call_text, message_line, render_table
from dataengine.curate import REVIEW_SCORER, ScoreCondition
from dataengine.provenance import with_provenance
from dataengine.schema import ScoreRow, TraceRow
from dataengine.store import Store
from supertiny.errors import UserError

REVIEW_VERSION = "1"


def select_traces(store: Store, *, domain: str | None = None, split: str | None = None, status: str | None = None,
                  job_id: int | None = None, where: Sequence[ScoreCondition] = (), pending: bool = False,
                  limit: int | None = None) -> list[int]:
    """Ids of the traces to review, oldest first: every filter must hold (a score condition fails
    on a trace without that score); ``pending`` keeps only traces nobody has reviewed yet."""
    traces = store.traces(domain=domain, split=split, status=status, job_id=job_id)
    values = store.score_values([REVIEW_SCORER, *(c.scorer for c in where)])
    chosen = [t.id for t in traces
              if all(c.holds(values.get(t.id, {})) for c in where)
              and not (pending and REVIEW_SCORER in values.get(t.id, {}))]
    return chosen[:limit] if limit else chosen


def parse_edited_call(text: str, domain: Any, current: dict[str, Any] | None) -> dict[str, Any]:
    """A typed answer, checked against the domain's action schemas. Either a whole call
    ``{"name": ..., "arguments": {...}}`` or just the arguments of the current action."""
    try:
        typed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"edit: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(typed, dict):
        raise UserError('edit: type a JSON object: {"name": ..., "arguments": {...}} or the arguments only')
    if "name" in typed and set(typed) <= {"name", "arguments"}:
        name, arguments = typed["name"], typed.get("arguments", {})
    elif current is not None:
        name, arguments = current["name"], typed
    else:
        raise UserError('edit: this trace has no action: type {"name": ..., "arguments": {...}}')
    actions = {tool.name: tool for tool in domain.actions}
    if name not in actions:
        raise UserError(f"edit: field 'name': {name!r} is not an action of domain {domain.name} "
                        f"(actions: {', '.join(sorted(actions))})")
    if not isinstance(arguments, dict):
        raise UserError("edit: field 'arguments': must be a JSON object")
    schema = actions[name].args_schema
    fields = schema.model_fields if hasattr(schema, "model_fields") else (schema or {}).get("properties", {})
    unknown = sorted(set(arguments) - set(fields))
    if unknown:
        raise UserError(f"edit: field 'arguments.{unknown[0]}': not a parameter of {name} "
                        f"(parameters: {', '.join(fields)})")
    if hasattr(schema, "model_validate"):
        try:
            validated = schema.model_validate(arguments)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise UserError(f"edit: field 'arguments.{where}': {error['msg']}") from None
        arguments = {k: v for k, v in validated.model_dump(mode="json", exclude_unset=True).items() if v is not None}
    return {"name": name, "arguments": arguments}


class ReviewSession:
    """A list of traces, a position in it, and the decisions made (stored at once)."""

    def __init__(self, store: Store, trace_ids: Sequence[int], reviewer: str | None = None):
        self.store = store
        self.trace_ids = list(trace_ids)
        self.position = 0
        self.reviewer = reviewer or _user_name()
        self.pending_notes: dict[int, str] = {}  # notes typed before a decision: stored with it
        self.decided: dict[int, str] = {}  # this session's decisions, for the closing summary

    @property
    def trace(self) -> TraceRow:
        return self.store.trace(self.trace_ids[self.position])

    def review(self, trace_id: int | None = None) -> ScoreRow | None:
        trace_id = self.trace_ids[self.position] if trace_id is None else trace_id
        return next((row for row in self.store.scores_of(trace_id) if row.scorer == REVIEW_SCORER), None)

    def move(self, step: int) -> bool:
        """Go ``step`` traces forward (or back); False when that leaves the list (the position stays)."""
        target = self.position + step
        if not 0 <= target < len(self.trace_ids):
            return False
        self.position = target
        return True

    def decide(self, decision: str, note: str | None = None, final_call: dict[str, Any] | None = None) -> None:
        """Store accept/reject (an edited answer is an accept) for the current trace."""
        trace = self.trace
        row = self.review(trace.id)
        previous = (row.details or {}) if row is not None else {}
        typed = [text for text in (self.pending_notes.pop(trace.id, None), note) if text]
        note = " · ".join(typed) if typed else previous.get("note")  # a new decision keeps an earlier note
        details: dict[str, Any] = {"decision": decision, "note": note}
        if final_call is None and decision == "accept" and previous.get("final_call"):
            final_call = previous["final_call"]  # accepting again keeps an earlier edit
        if final_call is not None:
            details.update(final_call=final_call, original_final_call=trace.final_call)
        config = {"reviewer": self.reviewer, "via": "supertiny traces review"}
        self.store.set_scores([(trace.id, REVIEW_SCORER, 1.0 if decision == "accept" else 0.0,
                                with_provenance(details, REVIEW_SCORER, REVIEW_VERSION, config))])
        self.decided[trace.id] = "edited" if final_call is not None else decision

    def edit(self, text: str, note: str | None = None) -> dict[str, Any]:
        trace = self.trace
        call = parse_edited_call(text, self.store.domain(trace.domain), trace.final_call)
        self.decide("accept", note, final_call=call)
        return call

    def add_note(self, text: str) -> bool:
        """Attach a note; True when it was stored (there is a decision), False when it waits for one."""
        row = self.review()
        if row is None:
            self.pending_notes[self.trace.id] = text
            return False
        self.store.set_scores([(row.trace_id, REVIEW_SCORER, row.value, {**row.details, "note": text})])
        return True

    def summary(self) -> dict[str, int]:
        outcomes = list(self.decided.values())
        return {"reviewed": len(outcomes), "accepted": outcomes.count("accept"), "edited": outcomes.count("edited"),
                "rejected": outcomes.count("reject")}


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers: the decision still counts
        return "unknown"


# ---- the terminal ----------------------------------------------------------------------------------

HELP = [
    ["a [note]", "accept the answer (and go to the next trace)"],
    ["r [note]", "reject it (and go to the next trace)"],
    ["e [json]", 'edit the answer: {"name": ..., "arguments": {...}} or the arguments only; accepts it'],
    ["c <text>", "add a note (comment) to this trace's decision"],
    ["n / Enter", "next trace"],
    ["p", "previous trace"],
    ["s", "show this trace again"],
    ["q", "quit (also Ctrl-D); decisions are already stored"],
]


def _score_text(row: ScoreRow) -> str:
    """``judge 0.75 (rationale)``: a score and the one detail a reviewer wants next to it."""
    details = row.details or {}
    if details.get("failed"):
        extra = f"failed: {details.get('error')}"
    else:
        extra = details.get("rationale") or details.get("problem") or details.get("note")
    return f"{row.scorer} {row.value:.3g}" + (f" ({extra})" if extra else "")


class ReviewShell:
    def __init__(self, session: ReviewSession, console: Console, read_line: Callable[[str], str] = input):
        self.session = session
        self.console = console
        self.read_line = read_line

    def show(self) -> None:
        session, console = self.session, self.console
        trace = session.trace
        tokens = trace.prompt_tokens + trace.completion_tokens
        header = (f"trace {trace.id} ({session.position + 1}/{len(session.trace_ids)}) · task {trace.task_id or '-'}"
                  f" · job {trace.job_id if trace.job_id is not None else '-'} sample {trace.sample_index}"
                  f" · {trace.model} · {trace.status} · {trace.model_calls} model calls · {tokens} tokens")
        console.rule(escape(header), align="left")
        console.print(f"[bold]request[/] {escape(trace.input)}", highlight=False)
        for message in convert_to_messages(trace.messages):
            if message.type in ("system", "human"):
                continue  # the system prompt is the same everywhere; the request is shown above
            console.print(f"  [cyan]{message.type:>4}[/] {escape(message_line(message))}", highlight=False)
        final = trace.final_call
        console.print(f"[bold]answer[/] {escape(call_text(final['name'], final['arguments']) if final else '(none)')}",
                      highlight=False)
        task = self.session.store.task(trace.task_id) if trace.task_id else None
        if task is not None and task.gold is not None:
            console.print(f"[bold]gold[/]   {escape(call_text(task.gold['name'], task.gold.get('arguments', {})))}",
                          highlight=False)
        scores = [row for row in session.store.scores_of(trace.id) if row.scorer != REVIEW_SCORER]
        if scores:
            console.print("[bold]scores[/] " + escape(" · ".join(_score_text(row) for row in scores)), highlight=False)
        console.print(f"[bold]review[/] {escape(self._decision_text())}", highlight=False)

    def _decision_text(self) -> str:
        row = self.session.review()
        pending = self.session.pending_notes.get(self.session.trace.id)
        if row is None:
            return "not reviewed" + (f" · note waiting for a decision: {pending}" if pending else "")
        details = row.details or {}
        text = "accepted" if row.value >= 1.0 else "rejected"
        if details.get("final_call"):
            call = details["final_call"]
            text += f" with edited answer {call_text(call['name'], call['arguments'])}"
        return text + (f" · note: {details['note']}" if details.get("note") else "")

    def prompt(self) -> str:
        session = self.session
        return f"review {session.position + 1}/{len(session.trace_ids)} #{session.trace.id} [a r e c n p s q ?]> "

    def loop(self) -> dict[str, int]:
        """Show traces and read commands until q or end of input; returns what was decided."""
        if not self.session.trace_ids:
            self.console.print("no traces match these filters")
            return self.session.summary()
        self.console.print("[bold]supertiny traces review[/] · ? lists the commands", highlight=False)
        self.show()
        while True:
            try:
                line = self.read_line(self.prompt())
            except EOFError:
                self.console.print()
                break
            except KeyboardInterrupt:
                self.console.print("\n(q or Ctrl-D leaves)")
                continue
            try:
                if not self.handle(line.strip()):
                    break
            except UserError as exc:
                self.console.print(f"[bold red]error:[/] {escape(' '.join(str(exc).split()))}", highlight=False)
        summary = self.session.summary()
        self.console.print(f"reviewed {summary['reviewed']}: {summary['accepted']} accepted, "
                           f"{summary['edited']} edited, {summary['rejected']} rejected", highlight=False)
        return summary

    def handle(self, line: str) -> bool:
        """Run one command; False means quit."""
        command, _, rest = line.partition(" ")
        command, rest = command.lower(), rest.strip()
        if command in ("q", "quit", "exit"):
            return False
        if command in ("", "n", "next"):
            self._advance()
        elif command in ("p", "prev", "previous"):
            if self.session.move(-1):
                self.show()
            else:
                self.console.print("this is the first trace")
        elif command in ("a", "accept", "r", "reject"):
            decision = "accept" if command.startswith("a") else "reject"
            self.session.decide(decision, rest or None)
            self.console.print(f"[green]{decision}ed[/] trace {self.session.trace.id}", highlight=False)
            self._advance()
        elif command in ("e", "edit"):
            self._edit(rest)
        elif command in ("c", "note", "comment"):
            if not rest:
                raise UserError("c: type the note after it, e.g. c the city is ambiguous")
            stored = self.session.add_note(rest)
            self.console.print("note stored" if stored else "note kept: a or r stores it with the decision")
        elif command in ("s", "show"):
            self.show()
        elif command in ("?", "h", "help"):
            render_table(self.console, "commands", ["command", "what it does"], HELP)
        else:
            raise UserError(f"unknown command {command!r}: ? lists the commands")
        return True

    def _edit(self, text: str) -> None:
        if not text:
            final = self.session.trace.final_call
            if final:
                self.console.print(f"current: {escape(json.dumps(final, ensure_ascii=False))}", highlight=False)
            try:
                text = self.read_line("answer JSON> ").strip()
            except EOFError:
                text = ""
            if not text:
                self.console.print("edit cancelled")
                return
        call = self.session.edit(text)
        self.console.print(f"[green]accepted[/] trace {self.session.trace.id} with "
                           f"{escape(call_text(call['name'], call['arguments']))}", highlight=False)
        self._advance()

    def _advance(self) -> None:
        if self.session.move(1):
            self.show()
        else:
            self.console.print(f"that was the last of {len(self.session.trace_ids)} traces: p goes back, q quits")
