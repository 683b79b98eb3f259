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


def parse_call(text: str) -> dict[str, Any] | None:
    """Parse the first line of a completion back into a call; ``None`` when it is not one."""
    line = text.strip().split("\n", 1)[0]
    match = _CALL.match(line)
    if not match:
        return None
    name, body = match.groups()
    arguments: dict[str, Any] = {}
    pos = 0
    while pos < len(body):
        arg = _ARG.match(body, pos)
        if not arg or arg.end() == pos:
            return None
        key, raw = arg.group(1), arg.group(2).strip()
        try:
            arguments[key] = json.loads(raw)
        except json.JSONDecodeError:
            if raw.startswith('"'):
                return None  # an unterminated string: not a call
            arguments[key] = raw  # an unquoted word: keep it, the verifier decides
        pos = arg.end()
    return {"name": name, "arguments": arguments}
