"""Dataset export: OpenAI chat JSONL (with tool calls), the same as a Hugging Face dataset on disk,
and the student's direct-mode pairs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool

from dataengine.curate import items_with_reviewed_answers
from dataengine.store import Store
from student.format import direct_completion, direct_prompt


def chat_records(store: Store, ref: str) -> list[dict[str, Any]]:
    """One OpenAI fine-tuning record per dataset item: messages ending with the assistant's
    action call, the tool schemas, and where it came from."""
    dataset = store.dataset(ref)
    domain = store.domain(dataset.domain)
    tools = [convert_to_openai_tool(t) for t in domain.tools + domain.actions]
    records = []
    for trace, task in items_with_reviewed_answers(store, dataset):  # reviewers' edited answers, if any
        messages = list(trace.messages)
        while messages and messages[-1]["role"] == "tool":  # the action's own "done" is not training signal
            messages.pop()
        records.append({"messages": messages, "tools": tools, "metadata": {
            "dataset": f"{dataset.name}@{dataset.version}", "trace_id": trace.id, "task_id": trace.task_id}})
    return records


def direct_examples(store: Store, ref: str) -> list[dict[str, str]]:
    """Direct-mode pairs for the student: the request and context -> the teacher's final call."""
    dataset = store.dataset(ref)
    return [{"prompt": direct_prompt(trace.input, trace.context), "completion": direct_completion(trace.final_call)}
            for trace, _ in items_with_reviewed_answers(store, dataset) if trace.final_call]


def save_hf_dataset(store: Store, ref: str, out: str | Path) -> int:
    """The chat records of ``ref`` as a Hugging Face ``datasets`` dataset saved to the directory
    ``out`` (read it back with ``datasets.load_from_disk``); returns the number of rows.

    Columns: ``messages`` (OpenAI format, tool calls included), ``tools`` (the schemas as JSON
    text: every tool's parameters have their own shape, and an Arrow column holds one type;
    ``json.loads`` it for a chat template), ``dataset``, ``trace_id`` and ``task_id``."""
    import datasets

    rows = [{"messages": record["messages"], "tools": json.dumps(record["tools"], ensure_ascii=False),
             **record["metadata"]} for record in chat_records(store, ref)]
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # its "Saving the dataset" bar is noise in a CLI's stderr
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return len(rows)


def write_jsonl(records: list[dict[str, Any]], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out
