"""SQLModel classes for the tables created in ``migrations.py`` (the DDL there is the truth;
a test checks these classes and the migrated database agree column for column)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(nullable: bool = False) -> Any:
    # none_as_null: Python None is SQL NULL (not the JSON text 'null'), so `where x is null` works.
    return Field(default=None if nullable else {}, sa_column=Column(JSON(none_as_null=True), nullable=nullable))


class TaskRow(SQLModel, table=True):
    __tablename__ = "tasks"
    id: str = Field(primary_key=True)
    domain: str
    split: str
    slice: Optional[str] = None
    input: str
    context: dict = _json()
    gold: Optional[dict] = _json(nullable=True)
    meta: dict = _json()
    created_at: str = Field(default_factory=utcnow)


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str
    kind: str
    domain: str
    split: str
    model: str
    samples: int
    temperature: float
    seed: int
    config: dict = _json()
    status: str = "running"  # running | done | interrupted | cancelled
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)
    # m004: the job's process and running counters (agent/batch.py keeps them in step with its writes)
    pid: Optional[int] = None
    samples_total: int = 0
    samples_done: int = 0
    samples_error: int = 0
    attempts: int = 0
    attempts_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Optional[float] = None
    stop_reason: Optional[str] = None


class TraceRow(SQLModel, table=True):
    __tablename__ = "traces"
    id: Optional[int] = Field(default=None, primary_key=True)
    task_id: Optional[str] = None
    job_id: Optional[int] = None
    sample_index: int = 0
    domain: str
    model: str
    input: str
    context: dict = _json()
    messages: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    final_call: Optional[dict] = _json(nullable=True)
    status: str
    error: Optional[str] = None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    model_calls: int
    label: Optional[str] = None
    note: Optional[str] = None
    created_at: str = Field(default_factory=utcnow)
    parent_trace_id: Optional[int] = None  # m002: the trace a debugger branch or replay came from
    thread_id: Optional[str] = None  # m002: LangGraph thread of a debugger session


class ModelCallRow(SQLModel, table=True):
    __tablename__ = "model_calls"
    id: Optional[int] = Field(default=None, primary_key=True)
    trace_id: int
    step: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: Optional[float] = None
    finish_reason: Optional[str] = None
    model: Optional[str] = None  # m002
    logprobs: Optional[list] = _json(nullable=True)  # m002: [[token, logprob, [[alt, lp], ...]], ...]
    error: Optional[str] = None  # m002


class ToolCallRow(SQLModel, table=True):
    __tablename__ = "tool_calls"
    id: Optional[int] = Field(default=None, primary_key=True)
    trace_id: int
    step: int
    position: int
    name: str
    args: Optional[Any] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    result: Optional[Any] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    error: Optional[str] = None
    latency_ms: float


class ScoreRow(SQLModel, table=True):
    __tablename__ = "scores"  # m005 indexes (scorer, value)
    id: Optional[int] = Field(default=None, primary_key=True)
    trace_id: int
    scorer: str
    value: float
    details: dict = _json()  # always holds "provenance": {scorer, version, config} (dataengine/provenance.py)
    created_at: str = Field(default_factory=utcnow)


class DatasetRow(SQLModel, table=True):
    __tablename__ = "datasets"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str
    version: int
    domain: str
    spec: dict = _json()
    created_at: str = Field(default_factory=utcnow)


class DatasetItemRow(SQLModel, table=True):
    __tablename__ = "dataset_items"
    dataset_id: int = Field(primary_key=True)
    position: int = Field(primary_key=True)
    trace_id: int
    task_id: Optional[str] = None


class ModelRow(SQLModel, table=True):
    __tablename__ = "models"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str
    kind: str
    path: str
    parent_id: Optional[int] = None
    dataset_id: Optional[int] = None
    config: dict = _json()
    params: Optional[int] = None
    bytes: Optional[int] = None
    created_at: str = Field(default_factory=utcnow)


class EvaluationRow(SQLModel, table=True):
    __tablename__ = "evaluations"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str
    model_label: str
    model_spec: str
    model_id: Optional[int] = None
    split: str
    slice: str
    n: int
    exact_match: float
    name_accuracy: float
    arg_f1: float
    latency_ms_median: float
    tokens_per_request: float
    calls_per_request: float
    created_at: str = Field(default_factory=utcnow)
    # m007: set for domains whose actions are intents and arguments slots (Domain.slot_metrics), else null
    intent_accuracy: Optional[float] = None
    slot_f1: Optional[float] = None  # micro F1 over (slot, value) pairs of the slice
    sentence_accuracy: Optional[float] = None  # intent and every slot right


class PredictionRow(SQLModel, table=True):
    __tablename__ = "predictions"
    id: Optional[int] = Field(default=None, primary_key=True)
    evaluation_run: str
    model_label: str
    task_id: str
    prediction: Optional[dict] = _json(nullable=True)
    exact: int
    latency_ms: float
    tokens: int
    model_calls: int


class DomainRow(SQLModel, table=True):
    __tablename__ = "domains"  # m003
    name: str = Field(primary_key=True)
    spec: str  # importable module path, or absolute path of a .py file
    updated_at: str = Field(default_factory=utcnow)


class AttemptRow(SQLModel, table=True):
    __tablename__ = "attempts"  # m004: one per model request a job made; failed ones carry their error
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int
    task_id: str
    sample_index: int
    trace_id: Optional[int] = None  # null: its run was abandoned, or its error trace was replaced by a retry
    step: int  # the trace's model call (1 = first)
    attempt: int  # 1 = first try of that call
    idempotency_key: str
    error: Optional[str] = None
    error_kind: Optional[str] = None  # rate_limit | server_error | timeout | connection | bad_response | ...
    http_status: Optional[int] = None
    retry_after_s: Optional[float] = None
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: str = Field(default_factory=utcnow)


class PriceRow(SQLModel, table=True):
    __tablename__ = "prices"  # m004: USD per million tokens; extends agent/pricing.py's built-in table
    model: str = Field(primary_key=True)
    prompt_usd_per_1m: float
    completion_usd_per_1m: float
    updated_at: str = Field(default_factory=utcnow)
