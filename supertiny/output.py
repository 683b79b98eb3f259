"""The one bundle of output options: ``--json`` for data, rich tables for people."""
from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

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


def evaluation_table(rows: Sequence[Any], title: str = "evaluation") -> Table:
    """The eval table: one row per model and slice. Columns: exact match, function-name accuracy,
    argument F1, median latency per request, prompt+completion tokens and model calls per request."""
    table = Table(title=title, caption="EM exact match · name function accuracy · p50 ms median latency "
                                       "per request · tokens and calls per request")
    for column in ("model", "slice", "n", "EM", "name", "arg F1", "p50 ms", "tokens", "calls"):
        table.add_column(column, justify="left" if column in ("model", "slice") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.model_label, r.slice, str(r.n), f"{r.exact_match:.1%}", f"{r.name_accuracy:.1%}",
                      f"{r.arg_f1:.3f}", f"{r.latency_ms_median:.1f}", f"{r.tokens_per_request:.0f}",
                      f"{r.calls_per_request:.2f}")
    return table
