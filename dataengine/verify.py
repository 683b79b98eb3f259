"""Gold-match verifier, BFCL-AST style: compare the function name, then each argument after
normalization (case, whitespace and punctuation for strings; ISO datetimes and durations by
value; numbers by value; a null argument equals a missing one).

Used twice: to score teacher traces (scorer ``gold_match``) and to grade every model in
``supertiny eval``, so the teacher and the student are judged by the same rule.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

SCORER = "gold_match"
CHECK_SCORER = "domain_check"  # a domain's programmatic check, which needs no gold


def normalize_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        try:  # ISO date/datetime: compare the instant, not the spelling
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?", text):
                moment = datetime.fromisoformat(text.replace(" ", "T"))
                return moment.isoformat() if "T" in text or " " in text else moment.date().isoformat()
        except ValueError:
            pass
        duration = re.fullmatch(r"P?T?(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text.upper())
        if text.upper().startswith("PT") and duration:
            h, m, s = (int(x or 0) for x in duration.groups())
            return f"duration:{h * 3600 + m * 60 + s}"
        return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())
    if isinstance(value, list):
        return [normalize_value(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize_value(v) for k, v in value.items()}
    return value


def _args(call: dict[str, Any] | None) -> dict[str, Any]:
    args = (call or {}).get("arguments") or {}
    return {key: normalize_value(value) for key, value in args.items() if value is not None}


def compare_calls(predicted: dict[str, Any] | None, gold: dict[str, Any]) -> dict[str, Any]:
    """Exact match, name match and argument precision/recall/F1 (an argument counts when its
    name and normalized value both match)."""
    name_match = bool(predicted) and predicted.get("name") == gold.get("name")
    pred_args, gold_args = _args(predicted), _args(gold)
    hits = sum(1 for key, value in pred_args.items() if key in gold_args and gold_args[key] == value) if name_match else 0
    precision = hits / len(pred_args) if pred_args else float(name_match and not gold_args)
    recall = hits / len(gold_args) if gold_args else float(name_match)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    exact = name_match and pred_args == gold_args
    wrong = sorted(k for k in gold_args.keys() | pred_args.keys() if pred_args.get(k) != gold_args.get(k))
    return {"exact": exact, "name_match": name_match, "arg_precision": precision, "arg_recall": recall,
            "arg_f1": f1, "mismatched_args": wrong if name_match else None}


def find_value_path(value: Any, target: Any, path: str = "") -> str | None:
    """The first path (``[0].name``, ``.city``) at which ``target`` sits inside the JSON ``value``,
    breadth first; ``None`` when it is not there. Types must match (``1`` is not ``"1"``)."""
    queue: list[tuple[Any, str]] = [(value, path)]
    while queue:
        node, where = queue.pop(0)
        if type(node) is type(target) and node == target and where:
            return where
        if isinstance(node, dict):
            queue += [(child, f"{where}.{key}") for key, child in node.items()
                      if isinstance(key, str) and re.fullmatch(r"[A-Za-z_]\w*", key)]
        elif isinstance(node, list):
            queue += [(child, f"{where}[{i}]") for i, child in enumerate(node)]
    return None


def ungrounded_arguments(tool_calls: Any, final_call: dict[str, Any] | None) -> int:
    """How many string arguments of the final call no successful lookup returned: values the
    model wrote from memory rather than read from a tool."""
    results = [c.result for c in tool_calls if c.error is None and c.result is not None
               and c.name != (final_call or {}).get("name")]
    return sum(1 for value in ((final_call or {}).get("arguments") or {}).values()
               if isinstance(value, str) and not any(find_value_path(r, value) is not None for r in results))
