"""The data engine's store: one class owns every write, one transaction per write.

SQLite in WAL mode (readers never block the writer), foreign keys on, and a busy timeout so a
second process waits instead of failing. Reads return SQLModel rows; users may also read the
same tables directly with ``sqlite3`` (see docs/schema.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import create_engine, event, func
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlmodel import Session, select

from dataengine.migrations import migrate
from dataengine.schema import (
    DatasetItemRow, DatasetRow, DomainRow, EvaluationRow, JobRow, ModelCallRow, ModelRow, PredictionRow, ScoreRow,
    TaskRow, ToolCallRow, TraceRow, utcnow,
)
from supertiny.errors import UserError

DEFAULT_DB = "db/supertiny.db"


def default_db_path() -> Path:
    return Path(os.environ.get("SUPERTINY_DB", DEFAULT_DB))


class TaskIn(BaseModel):
    """One line of a task file (JSONL): what users may write, and nothing else."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    domain: str | None = None
    split: str = "train"
    slice: str | None = None
    input: str
    context: dict[str, Any] = {}
    gold: dict[str, Any] | None = None
    meta: dict[str, Any] = {}


class Store:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db_path()
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}")

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_connection, _record):  # every connection, not just the first
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        try:
            with self.engine.begin() as connection:
                migrate(connection)
        except DatabaseError as exc:
            raise UserError(f"{self.path}: not a SQLite database ({exc.orig}); pass another --db") from None

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- domains -------------------------------------------------------------------------

    def domain(self, name_or_spec: str) -> Any:
        """The ``tools.registry.Domain`` for a built-in name, a module path or ``.py`` file (recorded
        under its name), or the name of a user domain recorded earlier in this database."""
        from tools.registry import BUILTIN_DOMAINS, get_domain

        if name_or_spec in BUILTIN_DOMAINS:
            return get_domain(name_or_spec)
        with self.session() as session:
            recorded = session.get(DomainRow, name_or_spec)
        if recorded is not None:
            return get_domain(recorded.spec)
        domain = get_domain(name_or_spec)
        spec = str(Path(name_or_spec).resolve()) if name_or_spec.endswith(".py") else name_or_spec
        with self.session() as session:
            session.merge(DomainRow(name=domain.name, spec=spec, updated_at=utcnow()))
            session.commit()
        return domain

    # ---- tasks ---------------------------------------------------------------------------

    def add_tasks(self, tasks: Iterable[Any]) -> tuple[int, int]:
        """Insert tasks (objects with id/domain/split/...); existing ids are kept, not replaced.
        Returns (inserted, already_present)."""
        rows = [TaskRow(id=t.id, domain=t.domain, split=t.split, slice=t.slice, input=t.input,
                        context=t.context, gold=t.gold, meta=getattr(t, "meta", {}) or {}) for t in tasks]
        with self.session() as session:
            existing = set(session.exec(select(TaskRow.id).where(TaskRow.id.in_([r.id for r in rows])))) if rows else set()
            new = [r for r in rows if r.id not in existing]
            session.add_all(new)
            session.commit()
        return len(new), len(rows) - len(new)

    def import_tasks_jsonl(self, path: str | Path, domain: str) -> tuple[int, int]:
        """Validate every line first, then insert in one transaction: a bad file stores nothing."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"task file not found: {path}")
        parsed: list[TaskIn] = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = TaskIn.model_validate(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "(line)"
                raise UserError(f"{path}:{lineno}: field {field!r}: {err['msg']}") from None
            if item.gold is not None and not isinstance(item.gold.get("name"), str):
                raise UserError(f"{path}:{lineno}: field 'gold': needs {{\"name\": ..., \"arguments\": {{...}}}}")
            item.domain = item.domain or domain
            item.id = item.id or f"{path.stem}-{lineno:06d}"
            parsed.append(item)
        if not parsed:
            raise UserError(f"{path}: no tasks in file")
        return self.add_tasks(parsed)

    def tasks(self, domain: str | None = None, split: str | None = None, limit: int | None = None) -> list[TaskRow]:
        query = select(TaskRow)
        if domain:
            query = query.where(TaskRow.domain == domain)
        if split:
            query = query.where(TaskRow.split == split)
        query = query.order_by(TaskRow.id)
        if limit:
            query = query.limit(limit)
        with self.session() as session:
            return list(session.exec(query))

    # ---- jobs and traces -----------------------------------------------------------------

    def job_for(self, *, kind: str, domain: str, split: str, model: str, samples: int, temperature: float,
                seed: int, config: dict[str, Any]) -> JobRow:
        """The job these settings name: created once, found again when the same command re-runs."""
        key = json.dumps({"kind": kind, "domain": domain, "split": split, "model": model, "samples": samples,
                          "temperature": temperature, "seed": seed, **config}, sort_keys=True)
        with self.session() as session:
            job = session.exec(select(JobRow).where(JobRow.key == key)).first()
            if job is None:
                job = JobRow(key=key, kind=kind, domain=domain, split=split, model=model, samples=samples,
                             temperature=temperature, seed=seed, config=config)
                session.add(job)
                session.commit()
            return job

    def set_job_status(self, job_id: int, status: str) -> None:
        with self.session() as session:
            job = session.get(JobRow, job_id)
            job.status, job.updated_at = status, utcnow()
            session.add(job)
            session.commit()

    def done_samples(self, job_id: int) -> set[tuple[str, int]]:
        with self.session() as session:
            rows = session.exec(select(TraceRow.task_id, TraceRow.sample_index).where(TraceRow.job_id == job_id))
            return {(task_id, sample) for task_id, sample in rows}

    def add_trace(self, result: Any, *, domain: str, model: str, input: str, context: dict[str, Any],
                  task_id: str | None = None, job_id: int | None = None, sample_index: int = 0,
                  label: str | None = None, note: str | None = None, parent_trace_id: int | None = None,
                  thread_id: str | None = None) -> int:
        """Store one agent run (``agent.run.TraceResult``) with its model and tool calls, atomically.
        A second write of the same (job, task, sample) is refused by the database and ignored."""
        trace = TraceRow(
            task_id=task_id, job_id=job_id, sample_index=sample_index, domain=domain, model=model, input=input,
            context=context, messages=result.messages, final_call=result.final_call, status=result.status,
            error=result.error, latency_ms=result.latency_ms, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, model_calls=result.model_calls, label=label, note=note,
            parent_trace_id=parent_trace_id, thread_id=thread_id,
        )
        with self.session() as session:
            session.add(trace)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                existing = session.exec(select(TraceRow.id).where(
                    TraceRow.job_id == job_id, TraceRow.task_id == task_id, TraceRow.sample_index == sample_index)).first()
                if existing is None:
                    raise
                return existing
            for step, call in enumerate(result.model_events, start=1):
                session.add(ModelCallRow(trace_id=trace.id, step=step, **call))
            for position, event in enumerate(result.tool_events):
                session.add(ToolCallRow(trace_id=trace.id, position=position, **event))
            session.commit()
            return trace.id

    def traces(self, *, job_id: int | None = None, domain: str | None = None, split: str | None = None,
               status: str | None = None, limit: int | None = None) -> list[TraceRow]:
        query = select(TraceRow)
        if job_id is not None:
            query = query.where(TraceRow.job_id == job_id)
        if domain:
            query = query.where(TraceRow.domain == domain)
        if status:
            query = query.where(TraceRow.status == status)
        if split:
            query = query.join(TaskRow, TaskRow.id == TraceRow.task_id).where(TaskRow.split == split)
        query = query.order_by(TraceRow.id.desc() if limit else TraceRow.id)
        if limit:
            query = query.limit(limit)
        with self.session() as session:
            return list(session.exec(query))

    def trace(self, trace_id: int) -> TraceRow:
        with self.session() as session:
            row = session.get(TraceRow, trace_id)
        if row is None:
            raise UserError(f"no trace with id {trace_id}")
        return row

    def tool_calls(self, trace_id: int) -> list[ToolCallRow]:
        with self.session() as session:
            return list(session.exec(select(ToolCallRow).where(ToolCallRow.trace_id == trace_id).order_by(ToolCallRow.position)))

    def task(self, task_id: str) -> TaskRow | None:
        with self.session() as session:
            return session.get(TaskRow, task_id)

    # ---- scores --------------------------------------------------------------------------

    def set_scores(self, scores: Sequence[tuple[int, str, float, dict[str, Any]]]) -> int:
        """Upsert (trace_id, scorer, value, details) rows in one transaction."""
        with self.session() as session:
            for trace_id, scorer, value, details in scores:
                row = session.exec(select(ScoreRow).where(ScoreRow.trace_id == trace_id, ScoreRow.scorer == scorer)).first()
                row = row or ScoreRow(trace_id=trace_id, scorer=scorer, value=value)
                row.value, row.details, row.created_at = value, details, utcnow()
                session.add(row)
            session.commit()
        return len(scores)

    def scored_traces(self, *, domain: str, split: str, scorer: str) -> list[tuple[TraceRow, float | None]]:
        """Every trace of ``domain``/``split`` tasks with its ``scorer`` value (None when unscored)."""
        query = (select(TraceRow, ScoreRow.value)
                 .join(TaskRow, TaskRow.id == TraceRow.task_id)
                 .join(ScoreRow, (ScoreRow.trace_id == TraceRow.id) & (ScoreRow.scorer == scorer), isouter=True)
                 .where(TaskRow.domain == domain, TaskRow.split == split)
                 .order_by(TraceRow.id))
        with self.session() as session:
            return [(trace, value) for trace, value in session.exec(query)]

    # ---- datasets ------------------------------------------------------------------------

    def create_dataset(self, name: str, domain: str, spec: dict[str, Any], traces: Sequence[TraceRow]) -> DatasetRow:
        """A new immutable version ``name@N`` holding exactly ``traces``, in order."""
        if not traces:
            raise UserError(f"dataset {name!r} would be empty: no traces passed the filter {spec}")
        with self.session() as session:
            latest = session.exec(select(func.max(DatasetRow.version)).where(DatasetRow.name == name)).one()
            dataset = DatasetRow(name=name, version=(latest or 0) + 1, domain=domain, spec=spec)
            session.add(dataset)
            session.flush()
            session.add_all(DatasetItemRow(dataset_id=dataset.id, position=i, trace_id=t.id, task_id=t.task_id)
                            for i, t in enumerate(traces))
            session.commit()
            return dataset

    def dataset(self, ref: str) -> DatasetRow:
        """``name`` (latest version) or ``name@N``."""
        name, _, version = ref.partition("@")
        query = select(DatasetRow).where(DatasetRow.name == name)
        if version:
            if not version.isdigit():
                raise UserError(f"bad dataset version in {ref!r}: use NAME or NAME@N")
            query = query.where(DatasetRow.version == int(version))
        with self.session() as session:
            row = session.exec(query.order_by(DatasetRow.version.desc())).first()
            known = [] if row else sorted(set(session.exec(select(DatasetRow.name))))
        if row is None:
            hint = f"known datasets: {', '.join(known)}" if known else "no datasets yet: run `supertiny dataset build`"
            raise UserError(f"unknown dataset {ref!r}; {hint}")
        return row

    def datasets(self) -> list[DatasetRow]:
        with self.session() as session:
            return list(session.exec(select(DatasetRow).order_by(DatasetRow.name, DatasetRow.version)))

    def dataset_items(self, dataset_id: int) -> list[tuple[TraceRow, TaskRow | None]]:
        query = (select(TraceRow, TaskRow)
                 .join(DatasetItemRow, DatasetItemRow.trace_id == TraceRow.id)
                 .join(TaskRow, TaskRow.id == TraceRow.task_id, isouter=True)
                 .where(DatasetItemRow.dataset_id == dataset_id)
                 .order_by(DatasetItemRow.position))
        with self.session() as session:
            return [(trace, task) for trace, task in session.exec(query)]

    # ---- models and evaluations ----------------------------------------------------------

    def add_model(self, *, name: str, kind: str, path: str, config: dict[str, Any], parent_id: int | None = None,
                  dataset_id: int | None = None, params: int | None = None, bytes: int | None = None) -> ModelRow:
        row = ModelRow(name=name, kind=kind, path=path, config=config, parent_id=parent_id, dataset_id=dataset_id,
                       params=params, bytes=bytes)
        with self.session() as session:
            session.add(row)
            session.commit()
            return row

    def model_by_path(self, path: str) -> ModelRow | None:
        with self.session() as session:
            return session.exec(select(ModelRow).where(ModelRow.path == path).order_by(ModelRow.id.desc())).first()

    def latest_model(self, kind: str) -> ModelRow | None:
        with self.session() as session:
            return session.exec(select(ModelRow).where(ModelRow.kind == kind).order_by(ModelRow.id.desc())).first()

    def models(self) -> list[ModelRow]:
        with self.session() as session:
            return list(session.exec(select(ModelRow).order_by(ModelRow.id)))

    def add_evaluation(self, rows: Sequence[EvaluationRow], predictions: Sequence[PredictionRow]) -> None:
        with self.session() as session:
            session.add_all(rows)
            session.add_all(predictions)
            session.commit()

    def evaluations(self, run_id: str) -> list[EvaluationRow]:
        with self.session() as session:
            return list(session.exec(select(EvaluationRow).where(EvaluationRow.run_id == run_id).order_by(EvaluationRow.id)))
