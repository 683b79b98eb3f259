"""Querying the store: the filters of ``traces list`` and read-only SQL for ``traces sql``.

Read-only means three locks, any one of which refuses a write: the SQLite file is opened
read-only (``file:...?mode=ro``), the connection has ``PRAGMA query_only``, and an authorizer
allows only reading (``SELECT``, functions, a few schema pragmas). The third matters because
``ATTACH 'x.db'`` creates a file and is not a write to *this* database. On PostgreSQL the
statement runs in a ``READ ONLY`` transaction that is rolled back.
"""
from __future__ import annotations

import operator
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from supertiny.errors import UserError

# The comparison a score condition (``dataengine.curate.ScoreCondition``) names, on SQL columns.
SQL_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq, "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class TraceFilter:
    """What ``traces list`` selects; every field set narrows the selection (AND)."""

    job_id: int | None = None
    model: str | None = None
    status: str | None = None
    split: str | None = None  # of the trace's task
    domain: str | None = None
    scores: Sequence[Any] = ()  # ScoreCondition-like (scorer, op, value): the trace has that score and it holds
    limit: int | None = None  # the newest N; None: every match, oldest first


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows matched than the limit


# Pragmas that only read, whatever their argument (``table_info(traces)``); every other pragma
# can change the connection or the file (``user_version = 7``, ``journal_mode = delete``).
READ_ONLY_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                     "foreign_key_list", "database_list", "collation_list", "function_list", "compile_options"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
WRITE_REFUSED = "refused: only reading statements run here (SELECT, WITH ... SELECT, schema pragmas)"


def sqlite_read_only(path: Path, sql: str, limit: int | None) -> QueryResult:
    """Run one statement on the SQLite file at ``path`` through a read-only connection."""
    refused: list[str] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action in _ALLOWED or (action == sqlite3.SQLITE_PRAGMA and arg1 in READ_ONLY_PRAGMAS):
            return sqlite3.SQLITE_OK
        refused.append(arg1 or str(action))
        return sqlite3.SQLITE_DENY

    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(authorize)
        cursor = connection.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit + 1)
    except sqlite3.ProgrammingError as exc:  # e.g. two statements
        raise UserError(f"sql: {exc}") from None
    except sqlite3.Error as exc:
        message = str(exc).splitlines()[0]
        if refused or "readonly" in message or "query_only" in message:
            raise UserError(f"sql: {WRITE_REFUSED}") from None
        raise UserError(f"sql: {message}") from None
    finally:
        connection.close()
    return _result(columns, rows, limit)


def postgresql_read_only(engine: Engine, sql: str, limit: int | None) -> QueryResult:
    """Run one statement in a read-only PostgreSQL transaction, then roll it back."""
    with engine.connect() as connection:
        try:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = connection.exec_driver_sql(sql)
            columns = list(result.keys()) if result.returns_rows else []
            rows = [tuple(r) for r in (result.fetchall() if limit is None else result.fetchmany(limit + 1))] \
                if result.returns_rows else []
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == "25006":  # read_only_sql_transaction
                raise UserError(f"sql: {WRITE_REFUSED}") from None
            raise UserError(f"sql: {str(exc.orig).strip().splitlines()[0]}") from None
        finally:
            connection.rollback()
    return _result(columns, rows, limit)


def _result(columns: list[str], rows: list[tuple[Any, ...]], limit: int | None) -> QueryResult:
    truncated = limit is not None and len(rows) > limit
    return QueryResult(columns, rows[:limit] if truncated else rows, truncated)
