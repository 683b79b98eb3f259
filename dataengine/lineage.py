"""Where a model came from, and how two dataset versions differ.

``model_lineage`` walks model -> parent models -> dataset version -> traces -> job -> teacher
model, all from rows the store already keeps (``models.parent_id``/``dataset_id``, the
version's exact item list, ``traces.job_id``, ``jobs.model``, and the model names endpoints
reported in ``model_calls``). ``dataset_diff`` compares two versions item by item, keyed by
task: a version holds at most one trace per task when best-of-N built it.
"""
from __future__ import annotations

from typing import Any

from dataengine.schema import DatasetRow, JobRow, ModelRow
from dataengine.store import Store


def model_lineage(store: Store, ref: str) -> dict[str, Any]:
    """The lineage of the model ``ref`` (id, name or path) as nested dicts:
    ``{"model", "dataset": {..., "sources": [{"job", "teacher", "trace_ids", ...}]}, "parent": {...}}``."""
    return _model_node(store, store.model_ref(ref), seen=set())


def _model_node(store: Store, model: ModelRow, seen: set[int]) -> dict[str, Any]:
    seen.add(model.id)
    node: dict[str, Any] = {"model": {"id": model.id, "name": model.name, "kind": model.kind, "path": model.path,
                                      "params": model.params, "created_at": model.created_at},
                            "dataset": None, "parent": None}
    if model.dataset_id is not None:
        dataset = store.dataset_by_id(model.dataset_id)
        node["dataset"] = _dataset_node(store, dataset) if dataset else {"id": model.dataset_id, "missing": True}
    if model.parent_id is not None and model.parent_id not in seen:  # a cycle would be a corrupt table: stop
        parent = store.model_by_id(model.parent_id)
        node["parent"] = _model_node(store, parent, seen) if parent else {"model": {"id": model.parent_id, "missing": True}}
    return node


def _dataset_node(store: Store, dataset: DatasetRow) -> dict[str, Any]:
    sources = []
    for source in store.dataset_sources(dataset.id):
        job = store.job(source["job_id"]) if source["job_id"] is not None else None
        sources.append({"job": _job(job) if job else None, "teacher": source["teacher"],
                        "reported_models": source["reported_models"], "traces": len(source["trace_ids"]),
                        "trace_ids": source["trace_ids"]})
    return {"id": dataset.id, "ref": f"{dataset.name}@{dataset.version}", "domain": dataset.domain,
            "spec": dataset.spec, "created_at": dataset.created_at,
            "items": sum(s["traces"] for s in sources), "sources": sources}


def _job(job: JobRow) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "model": job.model, "domain": job.domain, "split": job.split,
            "samples": job.samples, "temperature": job.temperature, "seed": job.seed, "status": job.status,
            "config": job.config}


def dataset_diff(store: Store, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Items of ``ref_b`` not in ``ref_a`` (added), of ``ref_a`` not in ``ref_b`` (removed), and
    tasks both hold with another trace (changed; ``answer_changed`` says whether the final call
    differs too). Items without a task are keyed by their trace."""
    a, b = store.dataset(ref_a), store.dataset(ref_b)
    items_a, items_b = _by_key(store, a), _by_key(store, b)
    added = [_item(items_b[k]) for k in items_b if k not in items_a]
    removed = [_item(items_a[k]) for k in items_a if k not in items_b]
    changed = [{"task_id": items_b[k]["task_id"], "from_trace": items_a[k]["trace_id"],
                "to_trace": items_b[k]["trace_id"], "from_call": items_a[k]["final_call"],
                "to_call": items_b[k]["final_call"],
                "answer_changed": items_a[k]["final_call"] != items_b[k]["final_call"]}
               for k in items_b if k in items_a and items_a[k]["trace_id"] != items_b[k]["trace_id"]]
    return {"from": _version(a, len(items_a)), "to": _version(b, len(items_b)),
            "added": added, "removed": removed, "changed": changed,
            "unchanged": sum(1 for k in items_b if k in items_a and items_a[k]["trace_id"] == items_b[k]["trace_id"])}


def _by_key(store: Store, dataset: DatasetRow) -> dict[str, dict[str, Any]]:
    return {item["task_id"] or f"trace:{item['trace_id']}": item for item in store.dataset_item_keys(dataset.id)}


def _item(item: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": item["task_id"], "trace_id": item["trace_id"], "final_call": item["final_call"]}


def _version(dataset: DatasetRow, items: int) -> dict[str, Any]:
    return {"ref": f"{dataset.name}@{dataset.version}", "domain": dataset.domain, "spec": dataset.spec,
            "items": items, "created_at": dataset.created_at}
