"""Dataset export: OpenAI chat JSONL (with tool calls), the same as a Hugging Face dataset on disk,
and the student's direct-mode pairs.

Exports stream: ``iter_chat_records`` / ``iter_direct_examples`` read a version's traces a batch
at a time (only the columns they write, no ORM rows), so ``dataset export`` of a million items
holds one batch. ``chat_records`` / ``direct_examples`` are the same as lists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from langchain_core.utils.function_calling import convert_to_openai_tool

from dataengine.curate import with_final_call
from dataengine.schema import DatasetRow, TraceRow
from dataengine.store import Store
from student.format import direct_completion, direct_prompt


def reviewed_traces(store: Store, dataset: DatasetRow, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """``id`` and ``columns`` of each trace of ``dataset``, in order, with the answers reviewers
    edited before it was built (``dataengine.curate.items_with_reviewed_answers``, streamed)."""
    edits = (dataset.spec or {}).get("edited_final_calls") or {}
    wanted = ("id", *columns, *(("messages", "final_call") if edits else ()))  # an edit rewrites both
    for row in store.dataset_trace_columns(dataset.id, tuple(dict.fromkeys(wanted))):
        call = edits.get(str(row["id"]))
        if call is not None:
            edited = with_final_call(TraceRow(id=row["id"], messages=row["messages"], final_call=row["final_call"]),
                                     call)
            row.update(messages=edited.messages, final_call=edited.final_call)
        yield row


def iter_chat_records(store: Store, ref: str) -> Iterator[dict[str, Any]]:
    """One OpenAI fine-tuning record per dataset item: messages ending with the assistant's
    action call, the tool schemas, and where it came from."""
    dataset = store.dataset(ref)
    domain = store.domain(dataset.domain)
    tools = [convert_to_openai_tool(t) for t in domain.tools + domain.actions]
    for trace in reviewed_traces(store, dataset, ("task_id", "messages")):
        messages = trace["messages"]
        while messages and messages[-1]["role"] == "tool":  # the action's own "done" is not training signal
            messages.pop()
        yield {"messages": messages, "tools": tools, "metadata": {
            "dataset": f"{dataset.name}@{dataset.version}", "trace_id": trace["id"], "task_id": trace["task_id"]}}


def chat_records(store: Store, ref: str) -> list[dict[str, Any]]:
    """:func:`iter_chat_records` as a list."""
    return list(iter_chat_records(store, ref))


def iter_direct_examples(store: Store, ref: str) -> Iterator[dict[str, str]]:
    """Direct-mode pairs for the student: the request and context -> the teacher's final call."""
    dataset = store.dataset(ref)
    for trace in reviewed_traces(store, dataset, ("input", "context", "final_call")):
        if trace["final_call"]:
            yield {"prompt": direct_prompt(trace["input"], trace["context"]),
                   "completion": direct_completion(trace["final_call"])}


def direct_examples(store: Store, ref: str) -> list[dict[str, str]]:
    """:func:`iter_direct_examples` as a list."""
    return list(iter_direct_examples(store, ref))


def save_hf_dataset(store: Store, ref: str, out: str | Path) -> int:
    """The chat records of ``ref`` as a Hugging Face ``datasets`` dataset saved to the directory
    ``out`` (read it back with ``datasets.load_from_disk``); returns the number of rows.

    Columns: ``messages`` (OpenAI format, tool calls included), ``tools`` (the schemas as JSON
    text: every tool's parameters have their own shape, and an Arrow column holds one type;
    ``json.loads`` it for a chat template), ``dataset``, ``trace_id`` and ``task_id``."""
    import datasets

    rows = [{"messages": record["messages"], "tools": json.dumps(record["tools"], ensure_ascii=False),
             **record["metadata"]} for record in iter_chat_records(store, ref)]
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # its "Saving the dataset" bar is noise in a CLI's stderr
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return len(rows)


def write_jsonl(records: Iterable[dict[str, Any]], out: str | Path) -> Path:
    out = Path(out)
    _write_lines(records, out)
    return out


def export_jsonl(store: Store, ref: str, format: str, out: str | Path) -> int:
    """``dataset export``: version ``ref`` as ``chat`` or ``direct`` JSONL in ``out``, streamed;
    returns the number of records."""
    records = iter_chat_records(store, ref) if format == "chat" else iter_direct_examples(store, ref)
    return _write_lines(records, Path(out))


def _write_lines(records: Iterable[dict[str, Any]], out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for count, record in enumerate(records, start=1):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return count
