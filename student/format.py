"""Direct-mode text format: the student's whole interface.

The teacher needs a long system prompt, tool schemas and several model calls per request.
The student maps ``context + utterance`` straight to the final call in one short completion:

    prompt:      "now=2026-03-14T09:30 weekday=Saturday\nturn off the kitchen lights\n=>"
    completion:  ' control_device(device_id="light.kitchen", action="off")'

(We tried listing the next seven days' dates in the prompt, so that "on friday" becomes a copy
instead of calendar arithmetic: it doubled the prompt, and so the training time, and did not
raise exact match — 50% vs 55% on the demo's test split, one run each.)

Values are JSON literals so that strings, numbers and nulls round-trip exactly.
"""
from __future__ import annotations

import json
import re
from typing import Any

PROMPT_END = "\n=>"


def direct_prompt(text: str, context: dict[str, Any] | None) -> str:
    """The student's prompt: one line of context (none when empty), the utterance, and the arrow."""
    ctx = " ".join(f"{key}={value}" for key, value in (context or {}).items())
    return f"{ctx}\n{text.strip()}{PROMPT_END}" if ctx else f"{text.strip()}{PROMPT_END}"


def format_call(call: dict[str, Any]) -> str:
    """``{"name": ..., "arguments": {...}}`` -> ``name(key=value, ...)``; null arguments are left out."""
    args = ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}"
        for key, value in call.get("arguments", {}).items()
        if value is not None
    )
    return f"{call['name']}({args})"


def direct_completion(call: dict[str, Any]) -> str:
    """The target the student is trained to produce after :func:`direct_prompt`."""
    return " " + format_call(call)


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*$")
_ARG = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')


def split_call(text: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``name(key=raw, ...)`` -> (name, [(key, raw text of the value), ...]); ``None`` when the
    text is not one call. The raw values are not decoded: :func:`parse_call` reads them as JSON,
    :mod:`student.program` also reads ``$`` references."""
    match = _CALL.match(text)
    if not match:
        return None
    name, body = match.groups()
    arguments: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        arg = _ARG.match(body, pos)
        if not arg or arg.end() == pos:
            return None
        arguments.append((arg.group(1), arg.group(2).strip()))
        pos = arg.end()
    return name, arguments


def decode_value(raw: str) -> Any:
    """One argument's raw text -> its value: a JSON literal, else the bare word itself (the
    verifier decides). Raises ValueError for an unterminated string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.startswith('"'):
            raise ValueError(f"unterminated string: {raw}") from None
        return raw


def parse_call(text: str) -> dict[str, Any] | None:
    """Parse the first line of a completion back into a call; ``None`` when it is not one."""
    split = split_call(text.strip().split("\n", 1)[0])
    if split is None:
        return None
    name, raw_arguments = split
    try:
        return {"name": name, "arguments": {key: decode_value(raw) for key, raw in raw_arguments}}
    except ValueError:
        return None  # an unterminated string: not a call
