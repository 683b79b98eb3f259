"""Reading what users bring: task files (JSONL, CSV) and external traces (OpenAI chat-log JSONL).

Parsers only, no database: each reads a whole file, validates every line and returns what to
store, so the store can write all of it in one transaction or nothing. Every error is one line
naming the file, the line and, where there is one, the field (``tasks.csv:3: field 'gold': ...``).
Files are decoded strictly as UTF-8: a Latin-1 or UTF-16 file is refused, never guessed at,
because a wrong guess silently garbles names. (SNIPS has its own reader: ``tools/snips``.)
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supertiny.errors import UserError


def read_utf8(path: str | Path, what: str = "file") -> str:
    """The text of ``path``, decoded strictly as UTF-8 (a UTF-8 byte-order mark is dropped)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    data = path.read_bytes()
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise UserError(f"{path}: is {encoding} (it starts with a {encoding} byte-order mark); save it as UTF-8")
    data = data.removeprefix(codecs.BOM_UTF8)  # first, so that error positions count from the text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def _field_error(path: Path, lineno: int, exc: ValidationError) -> UserError:
    """A pydantic error as ``file:line: field 'a.b': message`` (the first problem only: one line)."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "(line)"
    return UserError(f"{path}:{lineno}: field {where!r}: {err['msg']}")


def _json_error(path: Path, lineno: int, exc: json.JSONDecodeError, where: str | None = None) -> UserError:
    field_part = f" field {where!r}:" if where else ""
    return UserError(f"{path}:{lineno}:{field_part} not valid JSON ({exc.msg}, column {exc.colno})")


def _json_lines(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for each non-blank line of a JSONL file."""
    for lineno, line in enumerate(read_utf8(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise _json_error(path, lineno, exc) from None


# ---- tasks ------------------------------------------------------------------------------------


class TaskIn(BaseModel):
    """One task as users write it (a JSONL line, a CSV row): these fields and nothing else."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    domain: str | None = None
    split: str = "train"
    slice: str | None = None
    input: str
    context: dict[str, Any] = {}
    gold: dict[str, Any] | None = None
    meta: dict[str, Any] = {}


TASK_COLUMNS = list(TaskIn.model_fields)
JSON_COLUMNS = ("context", "gold", "meta")  # CSV cells holding JSON text


def _check_unique_ids(tasks: list[tuple[int, TaskIn]], path: Path) -> list[TaskIn]:
    """The tasks, once no two lines of the file name the same id."""
    first_line: dict[str, int] = {}
    for lineno, task in tasks:
        if task.id in first_line:
            raise UserError(f"{path}:{lineno}: field 'id': {task.id!r} is already the id of line {first_line[task.id]}")
        first_line[task.id] = lineno
    return [task for _, task in tasks]


def _task(record: Any, path: Path, lineno: int, domain: str) -> TaskIn:
    try:
        task = TaskIn.model_validate(record)
    except ValidationError as exc:
        raise _field_error(path, lineno, exc) from None
    if task.gold is not None and not isinstance(task.gold.get("name"), str):
        raise UserError(f"{path}:{lineno}: field 'gold': needs {{\"name\": ..., \"arguments\": {{...}}}}")
    task.domain = task.domain or domain
    task.id = task.id or f"{path.stem}-{lineno:06d}"
    return task


def parse_tasks_jsonl(path: str | Path, domain: str) -> list[TaskIn]:
    """One task object per line (blank lines skipped)."""
    path = Path(path)
    tasks: list[tuple[int, TaskIn]] = []  # (line, task)
    for lineno, record in _json_lines(path, "task file"):
        tasks.append((lineno, _task(record, path, lineno, domain)))
    if not tasks:
        raise UserError(f"{path}: no tasks in file")
    return _check_unique_ids(tasks, path)


def parse_tasks_csv(path: str | Path, domain: str) -> list[TaskIn]:
    """A header row naming task fields (``input`` required), then one task per row; the
    ``context``, ``gold`` and ``meta`` cells hold JSON; an empty cell means the field's default."""
    path = Path(path)
    rows = csv.reader(io.StringIO(read_utf8(path, "task file"), newline=""))
    header = [name.strip() for name in next(rows, [])]
    if not any(header):
        raise UserError(f"{path}: no tasks in file")
    for name in header:
        if name not in TASK_COLUMNS:
            raise UserError(f"{path}:1: unknown column {name!r}; columns are {', '.join(TASK_COLUMNS)}")
        if header.count(name) > 1:
            raise UserError(f"{path}:1: column {name!r} appears twice")
    if "input" not in header:
        raise UserError(f"{path}:1: missing required column 'input'")
    tasks: list[tuple[int, TaskIn]] = []  # (line, task)
    for cells in rows:
        lineno = rows.line_num  # the physical line the row ends on (a quoted cell may span lines)
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise UserError(f"{path}:{lineno}: {len(cells)} cells for {len(header)} columns")
        record: dict[str, Any] = {}
        for name, cell in zip(header, cells):
            if cell == "" and name != "input":
                continue
            if name in JSON_COLUMNS:
                try:
                    record[name] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    raise _json_error(path, lineno, exc, name) from None
            else:
                record[name] = cell
        tasks.append((lineno, _task(record, path, lineno, domain)))
    if not tasks:
        raise UserError(f"{path}: no tasks in file")
    return _check_unique_ids(tasks, path)


# ---- external traces: OpenAI chat-log JSONL ---------------------------------------------------


class _Function(BaseModel):
    name: str
    arguments: str  # JSON text, as the OpenAI API sends it


class _ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _Function


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # logs carry extras (refusal, annotations): kept as they are
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatLogLine(BaseModel):
    """One conversation of a chat log. ``tools`` and ``metadata`` (what ``dataset export`` writes)
    are accepted and not stored; ``context`` and ``task_id`` are stored with the trace (without a
    ``context``, it is read from a first user message shaped "Context: k=v ...\nRequest: ...")."""

    model_config = ConfigDict(extra="forbid")
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = {}
    context: dict[str, Any] = {}
    task_id: str | None = None


@dataclass
class ImportedTrace:
    """A conversation from a chat log, as the fields ``Store.add_traces`` stores."""

    line: int  # stored as the trace's sample_index: re-importing the same file adds nothing
    input: str
    context: dict[str, Any]
    task_id: str | None
    messages: list[dict[str, Any]]
    final_call: dict[str, Any] | None
    status: str
    model_events: list[dict[str, Any]] = field(default_factory=list)
    tool_events: list[dict[str, Any]] = field(default_factory=list)


# Domain.render_request's shape, which our own chat exports have: "Context: k=v k=v\nRequest: text".
_RENDERED_REQUEST = re.compile(r"^Context: ((?:\w+=\S+ ?)*)\nRequest: (.*)$", re.S)


def _text(content: str | list[Any] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _result(content: str) -> Any:
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        return content


def parse_chat_log(path: str | Path, action_names: set[str], model: str) -> list[ImportedTrace]:
    """Every conversation of ``path``. The final call is the last assistant tool call whose name
    is one of ``action_names``; the other tool calls become ``tool_calls`` rows (with the tool
    message that answered them as their result), every assistant turn a ``model_calls`` row
    (the log has no token counts or timings: they are stored as 0 and null)."""
    path = Path(path)
    traces = []
    for lineno, record in _json_lines(path, "chat log"):
        try:
            conversation = ChatLogLine.model_validate(record)
        except ValidationError as exc:
            raise _field_error(path, lineno, exc) from None
        traces.append(_conversation(conversation, path, lineno, action_names, model))
    if not traces:
        raise UserError(f"{path}: no conversations in file")
    return traces


def _conversation(conversation: ChatLogLine, path: Path, lineno: int, action_names: set[str],
                  model: str) -> ImportedTrace:
    messages = [m.model_dump(exclude_none=True) for m in conversation.messages]
    users = [m for m in conversation.messages if m.role == "user"]
    if not users:
        raise UserError(f"{path}:{lineno}: field 'messages': no user message")
    request = _text(users[0].content)
    rendered = _RENDERED_REQUEST.match(request)  # then the request is its second part, the context its first
    context = conversation.context
    if rendered and not context:  # values come back as text: give "context" on the line to keep types
        context = dict(pair.split("=", 1) for pair in rendered.group(1).split())
    results = {m.tool_call_id: _text(m.content) for m in conversation.messages if m.role == "tool"}

    final_call, model_events, tool_events = None, [], []
    assistant_turns = [(i, m) for i, m in enumerate(conversation.messages) if m.role == "assistant"]
    for step, (index, message) in enumerate(assistant_turns, start=1):
        model_events.append({"prompt_tokens": 0, "completion_tokens": 0, "latency_ms": None, "model": model,
                             "finish_reason": "tool_calls" if message.tool_calls else "stop"})
        for number, call in enumerate(message.tool_calls or []):
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError as exc:
                raise _json_error(path, lineno, exc,
                                  f"messages.{index}.tool_calls.{number}.function.arguments") from None
            if call.function.name in action_names:
                final_call = {"name": call.function.name, "arguments": arguments}
            else:
                result = results.get(call.id)
                tool_events.append({"step": step, "name": call.function.name, "args": arguments,
                                    "result": None if result is None else _result(result), "error": None,
                                    "latency_ms": 0.0})
    return ImportedTrace(line=lineno, input=rendered.group(2) if rendered else request,
                         context=context, task_id=conversation.task_id, messages=messages,
                         final_call=final_call, status="ok" if final_call else "no_call",
                         model_events=model_events, tool_events=tool_events)
