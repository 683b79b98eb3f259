"""The data engine's store: one class owns every write, one transaction per write.

SQLite in WAL mode (readers never block the writer), foreign keys on, and a busy timeout so a
second process waits instead of failing; or PostgreSQL, given a SQLAlchemy URL (docs/schema.md). Reads return SQLModel rows; users may also read the
same tables directly with ``sqlite3`` (see docs/schema.md).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import URL, create_engine, delete, event, exists, func, insert, make_url, update
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError
from sqlmodel import Session, select

from dataengine.imports import parse_chat_log, parse_tasks_csv, parse_tasks_jsonl
from dataengine.migrations import migrate
from dataengine.query import SQL_OPERATORS, QueryResult, TraceFilter, postgresql_read_only, sqlite_read_only
from dataengine.schema import (
    DatasetItemRow, DatasetRow, DomainRow, EvaluationRow, JobRow, ModelCallRow, ModelRow, PredictionRow, ScoreRow,
    TaskRow, ToolCallRow, TraceRow, utcnow,
)
from dataengine.schema import AttemptRow, PriceRow  # jobs (m004)
from supertiny.errors import UserError

DEFAULT_DB = "db/supertiny.db"


def default_db_path() -> Path:
    return Path(os.environ.get("SUPERTINY_DB", DEFAULT_DB))


@dataclass
class TraceRecord:
    """One trace to store: what the agent did (the fields of ``agent.run.TraceResult``) and where
    it came from (which task, job and sample)."""

    domain: str
    model: str
    input: str
    context: dict[str, Any]
    messages: list[dict[str, Any]]
    final_call: dict[str, Any] | None
    status: str
    error: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    model_events: list[dict[str, Any]] = field(default_factory=list)  # one model_calls row each, in order
    tool_events: list[dict[str, Any]] = field(default_factory=list)  # one tool_calls row each, in order
    task_id: str | None = None
    job_id: int | None = None
    sample_index: int = 0
    label: str | None = None
    note: str | None = None
    parent_trace_id: int | None = None
    thread_id: str | None = None

    @classmethod
    def from_result(cls, result: Any, **where: Any) -> "TraceRecord":
        """An ``agent.run.TraceResult`` plus ``where`` (domain, model, input, context, task_id, ...)."""
        return cls(messages=result.messages, final_call=result.final_call, status=result.status, error=result.error,
                   latency_ms=result.latency_ms, prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens, model_calls=result.model_calls,
                   model_events=result.model_events, tool_events=result.tool_events, **where)


class Store:
    def __init__(self, path: str | Path | None = None):
        """``path``: a SQLite file, or a SQLAlchemy URL such as ``postgresql+psycopg://user@host/db``
        (docs/schema.md: the same code runs on PostgreSQL). Default: ``SUPERTINY_DB`` or db/supertiny.db."""
        target = str(path) if path else str(default_db_path())
        try:
            self.url = make_url(target) if "://" in target else URL.create("sqlite", database=target)
            self.engine = create_engine(self.url)
        except (ArgumentError, ImportError) as exc:  # a malformed URL, or its driver is not installed
            raise UserError(f"--db {target!r}: {exc}") from None
        # The file of a SQLite database (None for a server): debugger checkpoints and `traces sql` use it.
        self.path = Path(self.url.database) if self.is_sqlite and self.url.database else None
        if self.path is not None and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)

        if self.is_sqlite:
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
            if self.is_sqlite:
                raise UserError(f"{self.path}: not a SQLite database ({exc.orig}); pass another --db") from None
            reason = str(exc.orig).strip().splitlines()[0]
            raise UserError(f"{self.url.render_as_string(hide_password=True)}: cannot open the database ({reason})") from None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

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
        ids = [r.id for r in rows]
        with self.session() as session:
            existing: set[str] = set()
            for start in range(0, len(ids), 500):  # chunks: a 100k-task import exceeds SQLite's bound-parameter limit
                existing.update(session.exec(select(TaskRow.id).where(TaskRow.id.in_(ids[start:start + 500]))))
            new = [r for r in rows if r.id not in existing]
            session.add_all(new)
            session.commit()
        return len(new), len(rows) - len(new)

    def import_tasks_jsonl(self, path: str | Path, domain: str) -> tuple[int, int]:
        """Validate every line first, then insert in one transaction: a bad file stores nothing."""
        return self.add_tasks(parse_tasks_jsonl(path, domain))

    def import_tasks_csv(self, path: str | Path, domain: str) -> tuple[int, int]:
        """A CSV with a header row (``dataengine.imports.parse_tasks_csv``); all rows or nothing."""
        return self.add_tasks(parse_tasks_csv(path, domain))

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
        A second write of the same (job, task, sample) is not stored again: the first one's id is returned."""
        record = TraceRecord.from_result(
            result, domain=domain, model=model, input=input, context=context, task_id=task_id, job_id=job_id,
            sample_index=sample_index, label=label, note=note, parent_trace_id=parent_trace_id, thread_id=thread_id)
        return self.add_traces([record])[0]

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

    # ---- curation (judge, self-consistency, dedup, review: dataengine/curate.py and friends) ----

    def score_values(self, scorers: Sequence[str]) -> dict[int, dict[str, float]]:
        """``{trace_id: {scorer: value}}`` for every stored score of these scorers."""
        values: dict[int, dict[str, float]] = {}
        with self.session() as session:
            for trace_id, scorer, value in session.exec(
                    select(ScoreRow.trace_id, ScoreRow.scorer, ScoreRow.value).where(ScoreRow.scorer.in_(list(scorers)))):
                values.setdefault(trace_id, {})[scorer] = value
        return values

    def score_rows(self, scorer: str) -> dict[int, ScoreRow]:
        """Every row of one scorer, by trace id (details included)."""
        with self.session() as session:
            return {row.trace_id: row for row in session.exec(select(ScoreRow).where(ScoreRow.scorer == scorer))}

    def scores_of(self, trace_id: int) -> list[ScoreRow]:
        """All scores of one trace, by scorer name."""
        with self.session() as session:
            return list(session.exec(select(ScoreRow).where(ScoreRow.trace_id == trace_id).order_by(ScoreRow.scorer)))

    def tool_calls_by_trace(self, trace_ids: Iterable[int]) -> dict[int, list[ToolCallRow]]:
        """The tool calls of many traces in one read, each trace's in order."""
        wanted = set(trace_ids)
        calls: dict[int, list[ToolCallRow]] = {trace_id: [] for trace_id in wanted}
        with self.session() as session:
            # One scan instead of one query per trace; filtering here avoids SQLite's bound-parameter limit.
            for row in session.exec(select(ToolCallRow).order_by(ToolCallRow.trace_id, ToolCallRow.position)):
                if row.trace_id in wanted:
                    calls[row.trace_id].append(row)
        return calls

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
            # One executemany, not one ORM object per item: versions of 100k+ items are built in seconds.
            session.execute(insert(DatasetItemRow.__table__), [
                {"dataset_id": dataset.id, "position": i, "trace_id": t.id, "task_id": t.task_id}
                for i, t in enumerate(traces)])
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

    def dataset_trace_columns(self, dataset_id: int, columns: Sequence[str],
                              batch: int = 1000) -> Iterator[dict[str, Any]]:
        """``columns`` of a version's traces, in item order, as dicts read ``batch`` rows at a time:
        an export of a million items holds a batch, not the version (nor ORM rows or their tasks)."""
        i, t = DatasetItemRow.__table__.c, TraceRow.__table__.c
        query = (select(*(t[column] for column in columns))
                 .join_from(DatasetItemRow.__table__, TraceRow.__table__, t.id == i.trace_id)
                 .where(i.dataset_id == dataset_id).order_by(i.position))
        with self.engine.connect() as connection:
            for row in connection.execution_options(yield_per=batch).execute(query).mappings():
                yield dict(row)

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

    # ---- querying / datasets: batch ingest, filters, read-only SQL, imports, lineage ------------

    def add_traces(self, records: Sequence[TraceRecord]) -> list[int]:
        """Store many traces with their model and tool calls in one transaction; returns their ids,
        in order. A trace whose (job, task, sample) is already stored is not written again: the
        stored one's id is returned (so is the first one's, for a repeat within ``records``)."""
        for attempt in (1, 2):
            try:
                with self.engine.begin() as connection:
                    return self._write_traces(connection, records)
            except IntegrityError:
                # Another writer may have stored one of these samples between our check and our
                # write; the second attempt's check sees it. Anything else fails again and is raised.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _write_traces(self, connection: Any, records: Sequence[TraceRecord]) -> list[int]:
        """``add_traces`` inside the caller's transaction (a batch job writes its counters in the same one)."""
        stored = self._stored_samples(connection, records)
        first_in_batch: dict[tuple, int] = {}  # sample key -> position of the record that writes it
        to_write: list[int] = []  # positions in ``records``
        for position, record in enumerate(records):
            key = _sample_key(record)
            if key is None or (key not in stored and key not in first_in_batch):
                to_write.append(position)
                if key is not None:
                    first_in_batch[key] = position
        id_at = dict(zip(to_write, self._insert_trace_rows(connection, [records[p] for p in to_write])))
        model_calls = [{"trace_id": id_at[p], "step": step, **{c: event.get(c) for c in _MODEL_CALL_FIELDS}}
                       for p in to_write for step, event in enumerate(records[p].model_events, start=1)]
        tool_calls = [{"trace_id": id_at[p], "position": position, **{c: event.get(c) for c in _TOOL_CALL_FIELDS}}
                      for p in to_write for position, event in enumerate(records[p].tool_events)]
        if model_calls:
            connection.execute(insert(ModelCallRow.__table__), model_calls)
        if tool_calls:
            connection.execute(insert(ToolCallRow.__table__), tool_calls)

        def trace_id(position: int, record: TraceRecord) -> int:
            if position in id_at:
                return id_at[position]
            key = _sample_key(record)
            return stored[key] if key in stored else id_at[first_in_batch[key]]

        return [trace_id(position, record) for position, record in enumerate(records)]

    def _insert_trace_rows(self, connection: Any, records: Sequence[TraceRecord]) -> list[int]:
        """Insert the ``traces`` rows of ``records`` in batched statements; their new ids, in order."""
        if not records:
            return []
        traces, now = TraceRow.__table__, utcnow()
        rows = [{column: getattr(record, column) for column in _TRACE_COLUMNS} | {"created_at": now}
                for record in records]
        # SQLite's RETURNING order is unspecified, and SQLAlchemy's ordered mode goes row by row there.
        # Rows inserted without an id get ids above every existing one, in VALUES order, and we hold the
        # write lock: sorted, the ids are in parameter order. PostgreSQL's ordered mode is batched.
        statement = insert(traces).returning(traces.c.id, sort_by_parameter_order=not self.is_sqlite)
        ids = list(connection.execute(statement, rows).scalars())
        return sorted(ids) if self.is_sqlite else ids

    def _stored_samples(self, connection: Any, records: Sequence[TraceRecord]) -> dict[tuple, int]:
        """``{(job_id, task_id, sample_index): trace id}`` of the samples in ``records`` already stored."""
        wanted: dict[int, set[str]] = {}  # job -> its tasks in ``records``
        for key in filter(None, map(_sample_key, records)):
            wanted.setdefault(key[0], set()).add(key[1])
        stored: dict[tuple, int] = {}
        t = TraceRow.__table__.c
        for job_id, task_ids in wanted.items():
            ordered = sorted(task_ids)
            for start in range(0, len(ordered), 500):  # well under any bound-parameter limit
                query = select(t.id, t.task_id, t.sample_index).where(
                    t.job_id == job_id, t.task_id.in_(ordered[start:start + 500]))
                for trace_id, task_id, sample_index in connection.execute(query):
                    stored[(job_id, task_id, sample_index)] = trace_id
        return stored

    def trace_summaries(self, where: TraceFilter) -> list[dict[str, Any]]:
        """The traces ``where`` selects, without their messages, each with ``scores``: {scorer: value}."""
        t = TraceRow.__table__.c
        query = self.select_traces(where, *(t[c] for c in SUMMARY_COLUMNS))
        s = ScoreRow.__table__.c
        scores_query = select(s.trace_id, s.scorer, s.value).where(
            s.trace_id.in_(self.select_traces(where, t.id)))  # the same selection, as a subquery
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings().all()]  # fetchall: not row by row
            scores: dict[int, dict[str, float]] = {}
            for trace_id, scorer, value in connection.execute(scores_query):
                scores.setdefault(trace_id, {})[scorer] = value
        for row in rows:
            row["scores"] = scores.get(row["id"], {})
        return rows

    def select_traces(self, where: TraceFilter, *columns: Any) -> Any:
        """The SELECT of ``columns`` of the traces ``where`` selects (to run, or to EXPLAIN). Every
        condition is on an indexed column or a correlated EXISTS that looks one row up by key, so
        the newest-N page reads about N traces (EXPLAIN QUERY PLAN: bench/bench_store.py)."""
        t = TraceRow.__table__.c
        query = select(*columns)
        for column, value in (("job_id", where.job_id), ("model", where.model), ("status", where.status),
                              ("domain", where.domain)):
            if value is not None:
                query = query.where(t[column] == value)
        if where.split is not None:
            tasks = TaskRow.__table__.c
            query = query.where(exists().where(tasks.id == t.task_id, tasks.split == where.split))
        s = ScoreRow.__table__.c
        for condition in where.scores:
            compare = SQL_OPERATORS[condition.op]
            query = query.where(exists().where(s.trace_id == t.id, s.scorer == condition.scorer,
                                               compare(s.value, condition.value)))
        if where.limit:
            return query.order_by(t.id.desc()).limit(where.limit)
        return query.order_by(t.id)

    def model_calls_of(self, trace_id: int) -> list[ModelCallRow]:
        with self.session() as session:
            return list(session.exec(select(ModelCallRow).where(ModelCallRow.trace_id == trace_id)
                                     .order_by(ModelCallRow.step)))

    def read_only_sql(self, sql: str, limit: int | None = None) -> QueryResult:
        """Run one reading statement through a read-only connection; any write is refused
        (``UserError``) and leaves the database as it was. ``limit``: at most that many rows."""
        if not sql.strip():
            raise UserError("sql: empty statement")
        if self.is_sqlite:
            return sqlite_read_only(self.path, sql, limit)
        return postgresql_read_only(self.engine, sql, limit)

    def import_chat_log(self, path: str | Path, domain: str, model: str) -> dict[str, Any]:
        """Store the conversations of an OpenAI chat-log JSONL file as traces of ``model``, under an
        ``import`` job named by the file's content: re-importing the same file adds nothing.
        The whole file is validated before anything is written."""
        d = self.domain(domain)
        conversations = parse_chat_log(path, d.action_names, model)
        path = Path(path)
        with self.session() as session:
            task_ids = {c.task_id for c in conversations if c.task_id is not None}
            known = set(session.exec(select(TaskRow.id).where(TaskRow.id.in_(sorted(task_ids))))) if task_ids else set()
        for c in conversations:
            if c.task_id is not None and c.task_id not in known:
                raise UserError(f"{path}:{c.line}: field 'task_id': no task {c.task_id!r} in this database")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        job = self.job_for(kind="import", domain=d.name, split="external", model=model, samples=1, temperature=0.0,
                           seed=0, config={"file": str(path.resolve()), "sha256": digest})
        done = self.done_samples(job.id)
        records = [TraceRecord(domain=d.name, model=model, input=c.input, context=c.context, messages=c.messages,
                               final_call=c.final_call, status=c.status, model_calls=len(c.model_events),
                               model_events=c.model_events, tool_events=c.tool_events, task_id=c.task_id,
                               job_id=job.id, sample_index=c.line)
                   for c in conversations if (c.task_id, c.line) not in done]
        with self.engine.begin() as connection:  # the traces and the job's counters together
            self._write_traces(connection, records)
            self._count_import(connection, job.id, total=len(conversations))
        return {"file": str(path), "job_id": job.id, "imported": len(records),
                "already_present": len(conversations) - len(records),
                "with_final_call": sum(r.final_call is not None for r in records)}

    def _count_import(self, connection: Any, job_id: int, total: int) -> None:
        """Mark import job ``job_id`` done with its counters counted from its stored traces (so that a
        re-import of the same file leaves them right): ``total`` samples, the traces stored, the
        error traces and their tokens. An import makes no requests: it has no attempts."""
        t, jobs = TraceRow.__table__.c, JobRow.__table__
        done, prompt, completion = connection.execute(
            select(func.count(), func.coalesce(func.sum(t.prompt_tokens), 0),
                   func.coalesce(func.sum(t.completion_tokens), 0)).where(t.job_id == job_id)).one()
        errors = connection.execute(select(func.count()).where(t.job_id == job_id, t.status == "error")).scalar()
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(
            status="done", samples_total=total, samples_done=done, samples_error=errors, prompt_tokens=prompt,
            completion_tokens=completion, updated_at=utcnow()))

    def dataset_item_keys(self, dataset_id: int) -> list[dict[str, Any]]:
        """A version's items in order: position, trace id, task id and the trace's final call."""
        i, t = DatasetItemRow.__table__.c, TraceRow.__table__.c
        query = (select(i.position, i.trace_id, i.task_id, t.final_call)
                 .join_from(DatasetItemRow.__table__, TraceRow.__table__, t.id == i.trace_id)
                 .where(i.dataset_id == dataset_id).order_by(i.position))
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def model_ref(self, ref: str) -> ModelRow:
        """A registered model by id, name (the newest of that name) or path."""
        with self.session() as session:
            row = session.get(ModelRow, int(ref)) if ref.isdigit() else None
            if row is None:
                row = session.exec(select(ModelRow).where(ModelRow.name == ref).order_by(ModelRow.id.desc())).first()
            if row is None:
                paths = {ref, str(Path(ref).resolve())}
                row = session.exec(select(ModelRow).where(ModelRow.path.in_(paths)).order_by(ModelRow.id.desc())).first()
        if row is None:
            raise UserError(f"unknown model {ref!r}: give a model id, name or path (see `supertiny models list`)")
        return row

    def model_by_id(self, model_id: int) -> ModelRow | None:
        with self.session() as session:
            return session.get(ModelRow, model_id)

    def dataset_by_id(self, dataset_id: int) -> DatasetRow | None:
        with self.session() as session:
            return session.get(DatasetRow, dataset_id)

    def job(self, job_id: int) -> JobRow | None:
        with self.session() as session:
            return session.get(JobRow, job_id)

    def dataset_sources(self, dataset_id: int) -> list[dict[str, Any]]:
        """Where a version's traces came from: one entry per (job, teacher model) with the trace
        ids and the model names the endpoint reported in their model calls."""
        i, t, m = DatasetItemRow.__table__.c, TraceRow.__table__.c, ModelCallRow.__table__.c
        items = select(t.job_id, t.model, t.id).join_from(DatasetItemRow.__table__, TraceRow.__table__,
                                                           t.id == i.trace_id).where(i.dataset_id == dataset_id)
        reported = (select(t.job_id, t.model, m.model).distinct()
                    .join_from(DatasetItemRow.__table__, TraceRow.__table__, t.id == i.trace_id)
                    .join(ModelCallRow.__table__, m.trace_id == t.id)
                    .where(i.dataset_id == dataset_id, m.model.is_not(None)))
        groups: dict[tuple[int | None, str], dict[str, Any]] = {}
        with self.engine.connect() as connection:
            for job_id, teacher, trace_id in connection.execute(items.order_by(t.id)):
                group = groups.setdefault((job_id, teacher), {"job_id": job_id, "teacher": teacher, "trace_ids": [],
                                                              "reported_models": []})
                group["trace_ids"].append(trace_id)
            for job_id, teacher, name in connection.execute(reported):
                groups[(job_id, teacher)]["reported_models"].append(name)
        for group in groups.values():
            group["reported_models"].sort()
        return sorted(groups.values(), key=lambda g: (g["job_id"] is None, g["job_id"] or 0, g["teacher"]))

    # ---- jobs: batch generation that survives faults (agent/batch.py, `supertiny jobs`) --------

    def existing_job(self, job_id: int) -> JobRow:
        """Job ``job_id``, or a UserError that says how to find the right id."""
        row = self.job(job_id)
        if row is None:
            raise UserError(f"no job with id {job_id}: `supertiny jobs list` shows the jobs")
        return row

    def jobs(self, limit: int | None = None) -> list[JobRow]:
        """Jobs, newest first."""
        query = select(JobRow).order_by(JobRow.id.desc())
        with self.session() as session:
            return list(session.exec(query.limit(limit) if limit else query))

    def job_status(self, job_id: int) -> str | None:
        """One column of one row: cheap enough for a running job to ask every second."""
        with self.engine.connect() as connection:
            return connection.execute(select(JobRow.__table__.c.status).where(JobRow.__table__.c.id == job_id)).scalar()

    def start_job(self, job_id: int, *, samples_total: int, run: dict[str, Any]) -> JobRow:
        """Mark the job running in this process; ``run`` (how this run runs) goes into its config."""
        with self.session() as session:
            job = session.get(JobRow, job_id)
            job.status, job.pid, job.stop_reason, job.samples_total = "running", os.getpid(), None, samples_total
            job.config = {**job.config, "run": run}
            job.updated_at = utcnow()
            session.add(job)
            session.commit()
            return job

    def stop_job(self, job_id: int, status: str, reason: str | None) -> JobRow:
        """``done``, ``interrupted`` or ``cancelled``, with why it stopped early (None when done)."""
        with self.session() as session:
            job = session.get(JobRow, job_id)
            job.status, job.stop_reason, job.pid, job.updated_at = status, reason, None, utcnow()
            session.add(job)
            session.commit()
            return job

    def cancel_job(self, job_id: int) -> JobRow:
        """Mark a job cancelled: a process running it stops within a second, and re-running its
        command refuses until ``jobs resume`` runs it again."""
        job = self.existing_job(job_id)
        if job.status == "done":
            raise UserError(f"job {job_id} is already done: nothing to cancel")
        return self.stop_job(job_id, "cancelled", "cancelled with `supertiny jobs cancel`")

    def job_samples(self, job_id: int) -> tuple[set[tuple[str, int]], dict[tuple[str, int], int]]:
        """What a run of the job skips and what it retries: the (task_id, sample_index) pairs whose
        trace stays, and the error traces a new run replaces ({pair: trace id}). An error trace that
        a dataset holds stays: dataset versions are immutable."""
        t, i = TraceRow.__table__.c, DatasetItemRow.__table__.c
        in_a_dataset = exists().where(i.trace_id == t.id)
        query = select(t.task_id, t.sample_index, t.id, (t.status == "error") & ~in_a_dataset).where(t.job_id == job_id)
        kept: set[tuple[str, int]] = set()
        retry: dict[tuple[str, int], int] = {}
        with self.engine.connect() as connection:
            for task_id, sample_index, trace_id, retryable in connection.execute(query):
                if retryable:
                    retry[(task_id, sample_index)] = trace_id
                else:
                    kept.add((task_id, sample_index))
        return kept, retry

    def record_job_results(self, job_id: int, outcomes: Sequence[Any], price: Any | None = None) -> JobRow:
        """Store finished samples of a job with every attempt behind them, and move the job's
        counters with them, in one transaction; returns the job row (its status shows a `jobs cancel`
        from elsewhere).

        Each outcome has ``task_id``, ``sample_index``, ``record`` (a :class:`TraceRecord`, or None
        when its run was abandoned) and ``attempts`` (``attempts`` rows without job, task, sample and
        trace). A record for a sample whose trace is an error trace replaces it in place (same id,
        new model and tool calls, old scores dropped); one for a sample already done is not stored.
        ``price`` (``agent.pricing.Price``) turns the job's tokens into ``cost_usd``."""
        jobs, traces, attempts = JobRow.__table__, TraceRow.__table__, AttemptRow.__table__
        now = utcnow()
        with self.engine.begin() as connection:
            # Write first: the transaction holds the write lock from its first statement, so what we
            # read next cannot change under us (and SQLite never has to upgrade a reader: no "locked").
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(updated_at=now))
            records = [o.record for o in outcomes if o.record is not None]
            stored = {(task_id, sample): (trace_id, status) for trace_id, task_id, sample, status in connection.execute(
                select(traces.c.id, traces.c.task_id, traces.c.sample_index, traces.c.status).where(
                    traces.c.job_id == job_id, traces.c.task_id.in_(sorted({r.task_id for r in records}))))}
            trace_of: dict[tuple[str, int], int] = {}
            new: list[TraceRecord] = []
            done = errors = 0
            for record in records:
                key = (record.task_id, record.sample_index)
                if key not in stored:
                    new.append(record)
                    done += 1
                    errors += record.status == "error"
                elif stored[key][1] == "error":
                    self._replace_trace(connection, stored[key][0], record, now)
                    trace_of[key] = stored[key][0]
                    errors += (record.status == "error") - 1
            trace_of.update(((r.task_id, r.sample_index), trace_id) for r, trace_id in zip(new, self._write_traces(connection, new)))
            rows = [{"job_id": job_id, "task_id": o.task_id, "sample_index": o.sample_index,
                     "trace_id": trace_of.get((o.task_id, o.sample_index)) if o.record is not None else None, **a}
                    for o in outcomes for a in o.attempts]
            if rows:
                connection.execute(insert(attempts), rows)
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(
                samples_done=jobs.c.samples_done + done, samples_error=jobs.c.samples_error + errors,
                attempts=jobs.c.attempts + len(rows),
                attempts_failed=jobs.c.attempts_failed + sum(r["error"] is not None for r in rows),
                prompt_tokens=jobs.c.prompt_tokens + sum(r["prompt_tokens"] for r in rows),
                completion_tokens=jobs.c.completion_tokens + sum(r["completion_tokens"] for r in rows)))
            if price is not None:  # cost follows the totals: a price set later applies to the whole job
                prompt, completion = connection.execute(
                    select(jobs.c.prompt_tokens, jobs.c.completion_tokens).where(jobs.c.id == job_id)).one()
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(
                    cost_usd=price.cost(prompt, completion)))
        return self.job(job_id)

    def _replace_trace(self, connection: Any, trace_id: int, record: TraceRecord, now: str) -> None:
        """Overwrite trace ``trace_id`` with ``record``: a retried error trace keeps its id, so
        anything that points at it still does; its attempts so far no longer belong to it."""
        t = TraceRow.__table__
        connection.execute(update(t).where(t.c.id == trace_id).values(
            **{column: getattr(record, column) for column in _TRACE_COLUMNS}, created_at=now))
        for table in (ModelCallRow.__table__, ToolCallRow.__table__, ScoreRow.__table__):
            connection.execute(delete(table).where(table.c.trace_id == trace_id))
        a = AttemptRow.__table__
        connection.execute(update(a).where(a.c.trace_id == trace_id).values(trace_id=None))
        model_calls = [{"trace_id": trace_id, "step": step, **{c: e.get(c) for c in _MODEL_CALL_FIELDS}}
                       for step, e in enumerate(record.model_events, start=1)]
        tool_calls = [{"trace_id": trace_id, "position": position, **{c: e.get(c) for c in _TOOL_CALL_FIELDS}}
                      for position, e in enumerate(record.tool_events)]
        if model_calls:
            connection.execute(insert(ModelCallRow.__table__), model_calls)
        if tool_calls:
            connection.execute(insert(ToolCallRow.__table__), tool_calls)

    def job_attempts(self, job_id: int) -> list[dict[str, Any]]:
        """The job's attempts by outcome: error kind, HTTP status, how many, and their latency."""
        a = AttemptRow.__table__.c
        query = (select(a.error_kind, a.http_status, func.count(), func.avg(a.latency_ms))
                 .where(a.job_id == job_id).group_by(a.error_kind, a.http_status)
                 .order_by(func.count().desc()))
        with self.engine.connect() as connection:
            return [{"error_kind": kind or "ok", "http_status": status, "attempts": n,
                     "mean_latency_ms": round(latency or 0.0, 1)} for kind, status, n, latency in connection.execute(query)]

    def prices(self) -> list[PriceRow]:
        with self.session() as session:
            return list(session.exec(select(PriceRow).order_by(PriceRow.model)))

    def set_price(self, model: str, prompt_usd_per_1m: float, completion_usd_per_1m: float) -> PriceRow:
        if prompt_usd_per_1m < 0 or completion_usd_per_1m < 0:
            raise UserError("a price must be >= 0 USD per million tokens")
        row = PriceRow(model=model, prompt_usd_per_1m=prompt_usd_per_1m, completion_usd_per_1m=completion_usd_per_1m)
        with self.session() as session:
            session.merge(row)
            session.commit()
        return row

def _sample_key(record: TraceRecord) -> tuple[int, str, int] | None:
    """The (job, task, sample) the database keeps one trace of; None when the trace has no job or task."""
    if record.job_id is None or record.task_id is None:
        return None
    return record.job_id, record.task_id, record.sample_index


# The columns add_traces writes from a TraceRecord, and the per-call fields of its events.
_TRACE_COLUMNS = ("task_id", "job_id", "sample_index", "domain", "model", "input", "context", "messages", "final_call",
                  "status", "error", "latency_ms", "prompt_tokens", "completion_tokens", "model_calls", "label", "note",
                  "parent_trace_id", "thread_id")
_MODEL_CALL_FIELDS = ("prompt_tokens", "completion_tokens", "latency_ms", "finish_reason", "model", "logprobs", "error")
_TOOL_CALL_FIELDS = ("step", "name", "args", "result", "error", "latency_ms")
# What `traces list` shows of a trace: every column but the messages (the bulk of a row).
SUMMARY_COLUMNS = tuple(column.name for column in TraceRow.__table__.columns if column.name != "messages")
