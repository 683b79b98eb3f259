"""Named, append-only schema migrations, recorded in the ``_migrations`` table.

Never edit a migration that has shipped: add a new one at the end. ``migrate`` applies the
ones a database has not seen, each in its own transaction, and refuses a database that has
migrations this version of supertiny does not know (it was written by a newer version).
The DDL here is the public schema documented in docs/schema.md.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Connection, text

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

MIGRATIONS: list[tuple[str, str]] = [
    ("m001_initial", M001_INITIAL),
    ("m002_endpoint_details", M002_ENDPOINT_DETAILS),
    ("m003_domains_and_sql_nulls", M003_DOMAINS_AND_SQL_NULLS),
]


def migrate(connection: Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    connection.execute(text("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
    applied = {row[0] for row in connection.execute(text("SELECT name FROM _migrations"))}
    known = {name for name, _ in MIGRATIONS}
    unknown = sorted(applied - known)
    if unknown:
        raise UserError(
            f"database has migrations this supertiny does not know ({', '.join(unknown)}): "
            "it was written by a newer version; upgrade supertiny"
        )
    done = []
    for name, ddl in MIGRATIONS:
        if name in applied:
            continue
        for statement in ddl.split(";"):
            if statement.strip():
                connection.execute(text(statement))
        connection.execute(
            text("INSERT INTO _migrations (name, applied_at) VALUES (:n, :t)"),
            {"n": name, "t": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        )
        done.append(name)
    return done
