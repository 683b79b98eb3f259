"""The one bundle of output options: ``--json`` for data, rich tables for people."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from supertiny.errors import UserError

console = Console()
err_console = Console(stderr=True)


def emit(rows: Sequence[dict[str, Any]], *, as_json: bool, title: str | None = None,
         columns: Sequence[str] | None = None) -> None:
    if as_json:
        print(json.dumps(list(rows), indent=2, ensure_ascii=False, default=str))
        return
    if not rows:
        console.print(f"[dim]no {title or 'rows'}[/]")
        return
    columns = list(columns or rows[0].keys())
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def has_slot_metrics(rows: Sequence[Any]) -> bool:
    """Whether any evaluation row carries intent/slot metrics (an intent/slot domain, m007)."""
    return any(getattr(r, "slot_f1", None) is not None for r in rows)


def evaluation_table(rows: Sequence[Any], title: str = "evaluation") -> Table:
    """The eval table: one row per model and slice. Columns: exact match, function-name accuracy,
    argument F1, median latency per request, prompt+completion tokens and model calls per request;
    for an intent/slot domain also intent accuracy, slot F1 and sentence accuracy."""
    slots = has_slot_metrics(rows)
    caption = "EM exact match · name function accuracy · p50 ms median latency per request · tokens and calls per request"
    table = Table(title=title, caption=caption + (" · intent accuracy · slot F1 over (slot, value) pairs · "
                                                  "sent: intent and every slot right" if slots else ""))
    columns = ["model", "slice", "n", "EM", "name", "arg F1"] + (["intent", "slot F1", "sent"] if slots else [])
    for column in columns + ["p50 ms", "tokens", "calls"]:
        table.add_column(column, justify="left" if column in ("model", "slice") else "right", no_wrap=True)
    for r in rows:
        slot_cells = [_share(r.intent_accuracy), _share(r.slot_f1), _share(r.sentence_accuracy)] if slots else []
        table.add_row(r.model_label, r.slice, str(r.n), f"{r.exact_match:.1%}", f"{r.name_accuracy:.1%}",
                      f"{r.arg_f1:.3f}", *slot_cells, f"{r.latency_ms_median:.1f}", f"{r.tokens_per_request:.0f}",
                      f"{r.calls_per_request:.2f}")
    return table


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


# The columns `eval --out` writes, in order; the intent/slot ones only when a row has them.
EVALUATION_COLUMNS = ["run_id", "model_label", "model_spec", "model_id", "split", "slice", "n", "exact_match",
                      "name_accuracy", "arg_f1", "latency_ms_median", "tokens_per_request", "calls_per_request"]
SLOT_COLUMNS = ["intent_accuracy", "slot_f1", "sentence_accuracy"]


def evaluation_records(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Evaluation rows as plain records with the stored column names (for CSV, JSON, Markdown)."""
    columns = EVALUATION_COLUMNS + (SLOT_COLUMNS if has_slot_metrics(rows) else [])
    return [{column: getattr(r, column) for column in columns} for r in rows]


def markdown_table(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   right: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table, floats with three decimals. Right-aligned: the ``right``
    columns, by default those holding only numbers."""
    columns = list(columns or (records[0].keys() if records else []))
    if right is None:
        right = [c for c in columns if records and all(isinstance(r.get(c), (int, float)) or r.get(c) is None
                                                       for r in records)]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_records(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write records as CSV, Markdown or JSON, chosen by the file's suffix."""
    import csv

    path = Path(path)
    if path.suffix not in (".csv", ".md", ".json"):
        raise UserError(f"--out {path}: use a .csv, .md or .json file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(list(records), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    elif path.suffix == ".md":
        path.write_text(markdown_table(records), encoding="utf-8")
    else:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0].keys()) if records else [])
            writer.writeheader()
            writer.writerows(records)
    return path
