"""Named, append-only schema migrations, recorded in the ``_migrations`` table.

Never edit a migration that has shipped: add a new one at the end. ``migrate`` applies the
ones a database has not seen, all in one transaction, and refuses a database that has
migrations this version of supertiny does not know (it was written by a newer version).
The DDL here is the public schema documented in docs/schema.md.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from sqlalchemy import Connection, inspect, text

from supertiny.errors import UserError

M001_INITIAL = """
CREATE TABLE tasks (
    id          TEXT PRIMARY KEY,           -- e.g. home-s0-test-00042
    domain      TEXT NOT NULL,
    split       TEXT NOT NULL,              -- train | dev | test
    slice       TEXT,                       -- test only: seen | novel (catalog entries unseen in train)
    input       TEXT NOT NULL,              -- the user's request
    context     JSON NOT NULL,              -- e.g. {"now": "2026-03-14T09:30", "weekday": "Saturday"}
    gold        JSON,                       -- {"name": ..., "arguments": {...}} or null
    meta        JSON NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);
CREATE INDEX tasks_domain_split ON tasks (domain, split);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,       -- same command, same key: re-running resumes the job
    kind        TEXT NOT NULL,              -- generate
    domain      TEXT NOT NULL,
    split       TEXT NOT NULL,
    model       TEXT NOT NULL,              -- planner | openai:<model>
    samples     INTEGER NOT NULL,
    temperature REAL NOT NULL,
    seed        INTEGER NOT NULL,
    config      JSON NOT NULL,
    status      TEXT NOT NULL,              -- running | done
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE traces (
    id                INTEGER PRIMARY KEY,
    task_id           TEXT REFERENCES tasks (id),   -- null for ad-hoc `agent run` requests
    job_id            INTEGER REFERENCES jobs (id), -- null for ad-hoc runs
    sample_index      INTEGER NOT NULL DEFAULT 0,
    domain            TEXT NOT NULL,
    model             TEXT NOT NULL,
    input             TEXT NOT NULL,
    context           JSON NOT NULL,
    messages          JSON NOT NULL,        -- OpenAI chat format, tool calls included
    final_call        JSON,                 -- the action call, or null
    status            TEXT NOT NULL,        -- ok | no_call | budget_exhausted | error
    error             TEXT,
    latency_ms        REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model_calls       INTEGER NOT NULL,
    label             TEXT,
    note              TEXT,
    created_at        TEXT NOT NULL,
    UNIQUE (job_id, task_id, sample_index)
);
CREATE INDEX traces_task ON traces (task_id);

CREATE TABLE model_calls (
    id                INTEGER PRIMARY KEY,
    trace_id          INTEGER NOT NULL REFERENCES traces (id) ON DELETE CASCADE,
    step              INTEGER NOT NULL,     -- 1 = first model call of the trace
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms        REAL,
    finish_reason     TEXT
);
CREATE INDEX model_calls_trace ON model_calls (trace_id);

CREATE TABLE tool_calls (
    id          INTEGER PRIMARY KEY,
    trace_id    INTEGER NOT NULL REFERENCES traces (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,           -- the model call that asked for it
    position    INTEGER NOT NULL,           -- order within the trace
    name        TEXT NOT NULL,
    args        JSON,
    result      JSON,
    error       TEXT,                       -- null when the tool succeeded
    latency_ms  REAL NOT NULL
);
CREATE INDEX tool_calls_trace ON tool_calls (trace_id);

CREATE TABLE scores (
    id          INTEGER PRIMARY KEY,
    trace_id    INTEGER NOT NULL REFERENCES traces (id) ON DELETE CASCADE,
    scorer      TEXT NOT NULL,              -- e.g. gold_match
    value       REAL NOT NULL,              -- 1.0 = exact match
    details     JSON NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (trace_id, scorer)
);

CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,           -- name@version is immutable once written
    domain      TEXT NOT NULL,
    spec        JSON NOT NULL,              -- how the items were chosen
    created_at  TEXT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE dataset_items (
    dataset_id  INTEGER NOT NULL REFERENCES datasets (id),
    position    INTEGER NOT NULL,
    trace_id    INTEGER NOT NULL REFERENCES traces (id),
    task_id     TEXT REFERENCES tasks (id),
    PRIMARY KEY (dataset_id, position)
);

CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- base | student | pruned | quantized
    path        TEXT NOT NULL,
    parent_id   INTEGER REFERENCES models (id),
    dataset_id  INTEGER REFERENCES datasets (id),
    config      JSON NOT NULL,
    params      INTEGER,
    bytes       INTEGER,
    created_at  TEXT NOT NULL
);

CREATE TABLE evaluations (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT NOT NULL,       -- one `supertiny eval` invocation
    model_label        TEXT NOT NULL,       -- teacher | base | student | compressed
    model_spec         TEXT NOT NULL,       -- planner, openai:..., or a model directory
    model_id           INTEGER REFERENCES models (id),
    split              TEXT NOT NULL,
    slice              TEXT NOT NULL,       -- all | seen | novel
    n                  INTEGER NOT NULL,
    exact_match        REAL NOT NULL,
    name_accuracy      REAL NOT NULL,
    arg_f1             REAL NOT NULL,
    latency_ms_median  REAL NOT NULL,
    tokens_per_request REAL NOT NULL,
    calls_per_request  REAL NOT NULL,
    created_at         TEXT NOT NULL
);

CREATE TABLE predictions (
    id             INTEGER PRIMARY KEY,
    evaluation_run TEXT NOT NULL,
    model_label    TEXT NOT NULL,
    task_id        TEXT NOT NULL REFERENCES tasks (id),
    prediction     JSON,
    exact          INTEGER NOT NULL,
    latency_ms     REAL NOT NULL,
    tokens         INTEGER NOT NULL,
    model_calls    INTEGER NOT NULL
);
"""

M002_ENDPOINT_DETAILS = """
-- what real endpoints return beyond token counts
ALTER TABLE model_calls ADD COLUMN model TEXT;            -- the model name the endpoint reported
ALTER TABLE model_calls ADD COLUMN logprobs JSON;         -- top-k log-probs of the generated tokens, compact:
                                                          -- [[token, logprob, [[alt, alt_logprob], ...]], ...]
ALTER TABLE model_calls ADD COLUMN error TEXT;            -- set when this call failed (the trace then ends)
-- the debugger's branches: a rewound or replayed run points at the trace it came from
ALTER TABLE traces ADD COLUMN parent_trace_id INTEGER REFERENCES traces (id);
ALTER TABLE traces ADD COLUMN thread_id TEXT;             -- LangGraph thread (debugger session/branch)
CREATE INDEX traces_parent ON traces (parent_trace_id);
"""

M003_DOMAINS_AND_SQL_NULLS = """
-- where a user-defined domain was loaded from, so later commands find it by its name
CREATE TABLE domains (
    name        TEXT PRIMARY KEY,           -- Domain.name, as stored in tasks.domain / traces.domain
    spec        TEXT NOT NULL,              -- importable module path, or absolute path of a .py file
    updated_at  TEXT NOT NULL
);
-- earlier versions wrote a missing JSON value as the text 'null': make it SQL NULL, as documented
UPDATE tasks SET gold = NULL WHERE gold = 'null';
UPDATE traces SET final_call = NULL WHERE final_call = 'null';
UPDATE tool_calls SET args = NULL WHERE args = 'null';
UPDATE tool_calls SET result = NULL WHERE result = 'null';
UPDATE model_calls SET logprobs = NULL WHERE logprobs = 'null';
UPDATE predictions SET prediction = NULL WHERE prediction = 'null';
"""

M004_JOBS = """
-- batch generation jobs that survive faults (agent/batch.py). Every model request a job makes is an
-- attempt: failed ones carry their error. A job keeps running counters so `jobs list` reads one row.
-- (No semicolons in these comments: migrate() splits statements on them.)
ALTER TABLE jobs ADD COLUMN pid INTEGER;                              -- process running it (while status = running)
ALTER TABLE jobs ADD COLUMN samples_total INTEGER NOT NULL DEFAULT 0; -- tasks x samples, as of its last start
ALTER TABLE jobs ADD COLUMN samples_done INTEGER NOT NULL DEFAULT 0;  -- (task, sample) pairs with a trace
ALTER TABLE jobs ADD COLUMN samples_error INTEGER NOT NULL DEFAULT 0; -- of those, error traces (a resume retries them)
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;      -- model requests made, retries included
ALTER TABLE jobs ADD COLUMN attempts_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0; -- over every attempt, abandoned runs included
ALTER TABLE jobs ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cost_usd REAL;                            -- from the price table, null when the model has no price
ALTER TABLE jobs ADD COLUMN stop_reason TEXT;                         -- why it stopped early (interrupted, cancelled, refused)
-- jobs written before m004: what their traces say
UPDATE jobs SET
    samples_done = (SELECT count(*) FROM traces WHERE traces.job_id = jobs.id),
    samples_error = (SELECT count(*) FROM traces WHERE traces.job_id = jobs.id AND traces.status = 'error'),
    prompt_tokens = (SELECT coalesce(sum(prompt_tokens), 0) FROM traces WHERE traces.job_id = jobs.id),
    completion_tokens = (SELECT coalesce(sum(completion_tokens), 0) FROM traces WHERE traces.job_id = jobs.id),
    attempts = (SELECT coalesce(sum(model_calls), 0) FROM traces WHERE traces.job_id = jobs.id);
UPDATE jobs SET samples_total = samples_done;

CREATE TABLE attempts (
    id                INTEGER PRIMARY KEY,
    job_id            INTEGER NOT NULL REFERENCES jobs (id),
    task_id           TEXT NOT NULL REFERENCES tasks (id),
    sample_index      INTEGER NOT NULL,
    trace_id          INTEGER REFERENCES traces (id) ON DELETE SET NULL,  -- the trace its run produced, null when that
                                                                       -- run was abandoned or its error trace replaced
    step              INTEGER NOT NULL,     -- the trace's model call it was for (1 = first)
    attempt           INTEGER NOT NULL,     -- 1 = first try of that call, 2 = first retry, ...
    idempotency_key   TEXT NOT NULL,        -- one per (job, task, sample), sent as the Idempotency-Key header (KEY-STEP)
    error             TEXT,                 -- null: the attempt succeeded
    error_kind        TEXT,                 -- rate_limit | server_error | timeout | connection | bad_response |
                                            -- client_error | refused | abandoned | other
    http_status       INTEGER,              -- when the endpoint answered with an HTTP error
    retry_after_s     REAL,                 -- what the endpoint asked us to wait (Retry-After)
    latency_ms        REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL
);
CREATE INDEX attempts_sample ON attempts (job_id, task_id, sample_index);
CREATE INDEX attempts_trace ON attempts (trace_id);

-- USD per million tokens, per model: overrides and extends the built-in table in agent/pricing.py
CREATE TABLE prices (
    model                 TEXT PRIMARY KEY, -- as in jobs.model (openai:gpt-4o-mini) or the bare name (gpt-4o-mini)
    prompt_usd_per_1m     REAL NOT NULL,
    completion_usd_per_1m REAL NOT NULL,
    updated_at            TEXT NOT NULL
);
"""

M005_CURATION = """
-- curation reads scores by scorer (every judge, dedup or review score of a split, and `dataset
-- build --require`): the unique (trace_id, scorer) index leads with the trace, so it cannot serve that.
-- (No semicolons in these comments: migrate() splits statements on them.)
-- Provenance (scorer version and config) is in details.provenance: no new columns.
CREATE INDEX scores_scorer ON scores (scorer, value);
"""

M006_DATASETS = """
-- `traces list` filters (--model, --status, --domain) walk these newest first: an index entry
-- holds the rowid, so `WHERE model = ? ORDER BY id DESC LIMIT 20` reads 20 entries, sorts nothing
CREATE INDEX traces_model ON traces (model);
CREATE INDEX traces_status ON traces (status);
CREATE INDEX traces_domain ON traces (domain);
-- (job_id, task_id, sample_index) is unique, but that index orders a job's traces by task: --job needs its own
CREATE INDEX traces_job ON traces (job_id);
-- which versions hold a trace (lineage, and a job never replaces an error trace that a version holds)
CREATE INDEX dataset_items_trace ON dataset_items (trace_id);
"""

M007_INTENT_SLOT_METRICS = """
-- `supertiny eval` on a domain whose actions are intents and their arguments slots (Domain.slot_metrics,
-- e.g. snips) also stores the metrics the literature reports (student/intent_slot.py). Null for other domains.
-- (No semicolons in these comments: migrate() splits statements on them.)
ALTER TABLE evaluations ADD COLUMN intent_accuracy REAL;    -- share of requests with the right function (intent)
ALTER TABLE evaluations ADD COLUMN slot_f1 REAL;            -- micro F1 over the (slot, value) pairs of the slice
ALTER TABLE evaluations ADD COLUMN sentence_accuracy REAL;  -- intent right and every slot verbatim right
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("m001_initial", M001_INITIAL),
    ("m002_endpoint_details", M002_ENDPOINT_DETAILS),
    ("m003_domains_and_sql_nulls", M003_DOMAINS_AND_SQL_NULLS),
    ("m004_jobs", M004_JOBS),
    ("m005_curation", M005_CURATION),
    ("m006_datasets", M006_DATASETS),
    ("m007_intent_slot_metrics", M007_INTENT_SLOT_METRICS),
]


# The DDL above is SQLite's. The same migrations run on PostgreSQL with three type spellings
# changed: a rowid alias becomes an identity column, JSON becomes JSONB (it has equality, which
# m003 uses), and REAL (8 bytes in SQLite, 4 in PostgreSQL) becomes DOUBLE PRECISION.
_POSTGRESQL_SPELLINGS = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bJSON\b"), "JSONB"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
]


def for_postgresql(statement: str) -> str:
    """One SQLite DDL statement of ``MIGRATIONS`` as PostgreSQL spells it."""
    for pattern, replacement in _POSTGRESQL_SPELLINGS:
        statement = pattern.sub(replacement, statement)
    return statement


def _applied(connection: Connection) -> set[str]:
    if not inspect(connection).has_table("_migrations"):
        return set()
    return {row[0] for row in connection.execute(text("SELECT name FROM _migrations"))}


def _refuse_unknown(applied: set[str]) -> None:
    unknown = sorted(applied - {name for name, _ in MIGRATIONS})
    if unknown:
        raise UserError(
            f"database has migrations this supertiny does not know ({', '.join(unknown)}): "
            "it was written by a newer version; upgrade supertiny"
        )


def migrate(connection: Connection) -> list[str]:
    """Apply pending migrations, all in one transaction; returns the names applied.

    On SQLite the transaction is opened with ``BEGIN IMMEDIATE``: the pysqlite driver would
    otherwise run DDL outside any transaction, so a crash half-way through a migration would leave
    it half applied, and two processes opening the same new database would both migrate it. A
    database that is up to date takes no lock at all."""
    applied = _applied(connection)
    _refuse_unknown(applied)
    if all(name in applied for name, _ in MIGRATIONS):
        return []
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy_timeout) for another migrator
        applied = _applied(connection)  # that other process may have done the work meanwhile
        _refuse_unknown(applied)
    connection.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
    done = []
    for name, ddl in MIGRATIONS:
        if name in applied:
            continue
        for statement in ddl.split(";"):
            if statement.strip():
                if connection.dialect.name == "postgresql":
                    statement = for_postgresql(statement)
                connection.execute(text(statement))
        connection.execute(
            text("INSERT INTO _migrations (name, applied_at) VALUES (:n, :t)"),
            {"n": name, "t": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        )
        done.append(name)
    return done
