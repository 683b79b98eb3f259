import json
import sqlite3

import pytest
from sqlmodel import SQLModel

from agent.run import TraceResult
from dataengine.migrations import M001_INITIAL, MIGRATIONS
from dataengine.store import Store
from supertiny.errors import UserError
from tools.home.tasks import generate_tasks


def _result(call=None, status="ok", calls=2, tokens=100):
    return TraceResult(messages=[{"role": "user", "content": "x"}], final_call=call, status=status, error=None,
                       latency_ms=5.0, prompt_tokens=tokens, completion_tokens=10, model_calls=calls,
                       tool_events=[{"step": 1, "name": "find_city", "args": {"name": "paris"}, "result": {"city": "Paris"},
                                     "error": None, "latency_ms": 0.5}],
                       model_events=[{"prompt_tokens": tokens, "completion_tokens": 10, "latency_ms": 1.0,
                                      "finish_reason": "tool_calls"}] * calls)


def test_migrations_are_recorded_and_the_database_is_in_wal_mode(store):
    with sqlite3.connect(store.path) as conn:
        assert [r[0] for r in conn.execute("select name from _migrations order by name")] == [n for n, _ in MIGRATIONS]
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    Store(store.path)  # reopening applies nothing twice
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from _migrations").fetchone()[0] == len(MIGRATIONS)


def test_a_database_written_by_the_first_version_is_upgraded_with_its_rows_intact(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # what supertiny with only m001 left on disk
        conn.executescript(M001_INITIAL)
        conn.execute("create table _migrations (name text primary key, applied_at text not null)")
        conn.execute("insert into _migrations values ('m001_initial', '2026-11-01T00:00:00')")
        conn.execute("insert into traces (domain, model, input, context, messages, status, latency_ms, prompt_tokens,"
                     " completion_tokens, model_calls, created_at) values ('home', 'planner', 'hi', '{}', '[]', 'ok',"
                     " 1.0, 1, 1, 1, 'then')")
    upgraded = Store(path)
    assert upgraded.trace(1).input == "hi" and upgraded.trace(1).parent_trace_id is None
    with sqlite3.connect(path) as conn:
        assert "logprobs" in {row[1] for row in conn.execute("pragma table_info(model_calls)")}
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_sqlmodel_classes_match_the_migrated_schema(store):
    with sqlite3.connect(store.path) as conn:
        for table in SQLModel.metadata.sorted_tables:
            columns = {row[1] for row in conn.execute(f"pragma table_info({table.name})")}
            assert columns == {c.name for c in table.columns}, table.name


def test_a_database_from_a_newer_version_is_refused(store):
    with sqlite3.connect(store.path) as conn:
        conn.execute("insert into _migrations values ('m999_future', 'now')")
    with pytest.raises(UserError, match="newer version"):
        Store(store.path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("these are my notes, not a database " * 100)
    with pytest.raises(UserError, match="not a SQLite database"):
        Store(bad)
    assert bad.read_text().startswith("these are my notes")


def test_tasks_are_idempotent_and_traces_unique_per_sample(store):
    tasks = generate_tasks(seed=0, n_train=5, n_dev=0, n_test=0)
    assert store.add_tasks(tasks) == (5, 0)
    assert store.add_tasks(tasks) == (0, 5)
    job = store.job_for(kind="generate", domain="home", split="train", model="planner", samples=1, temperature=0.0,
                        seed=0, config={})
    first = store.add_trace(_result(), domain="home", model="planner", input="x", context={}, task_id=tasks[0].id,
                            job_id=job.id)
    second = store.add_trace(_result(), domain="home", model="planner", input="x", context={}, task_id=tasks[0].id,
                             job_id=job.id)
    assert first == second
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from traces").fetchone()[0] == 1
        assert conn.execute("select count(*) from tool_calls").fetchone()[0] == 1
        assert conn.execute("select count(*) from model_calls").fetchone()[0] == 2


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line,message", [
    ('{"input": "hi", "context": {}', ":2: not valid JSON"),
    ('{"context": {}}', ":2: field 'input': Field required"),
    ('{"input": "hi", "colour": "red"}', ":2: field 'colour': Extra inputs are not permitted"),
    ('{"input": "hi", "context": "now"}', ":2: field 'context'"),
    ('{"input": "hi", "gold": {"arguments": {}}}', ":2: field 'gold'"),
])
def test_a_malformed_task_file_names_the_line_and_field_and_stores_nothing(store, tmp_path, line, message):
    store.add_tasks(generate_tasks(seed=0, n_train=3, n_dev=0, n_test=0))
    path = _write(tmp_path / "tasks.jsonl", ['{"input": "turn on the tv", "context": {"now": "2026-01-01T10:00"}}', line])
    with pytest.raises(UserError, match=message) as err:
        store.import_tasks_jsonl(path, "home")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert len(store.tasks()) == 3


def test_a_good_task_file_imports(store, tmp_path):
    path = _write(tmp_path / "mine.jsonl", [
        json.dumps({"input": "turn on the tv", "context": {"now": "2026-01-01T10:00"}, "split": "test",
                    "gold": {"name": "control_device", "arguments": {"device_id": "tv.living_room", "action": "on"}}}),
        "",
        json.dumps({"id": "t2", "input": "play queen"}),
    ])
    assert store.import_tasks_jsonl(path, "home") == (2, 0)
    assert {t.id for t in store.tasks()} == {"mine-000001", "t2"}
    with pytest.raises(UserError, match="task file not found"):
        store.import_tasks_jsonl(tmp_path / "missing.jsonl", "home")


def test_datasets_are_versioned_and_unknown_names_are_user_errors(store):
    tasks = generate_tasks(seed=0, n_train=2, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    ids = [store.add_trace(_result(), domain="home", model="planner", input=t.input, context=t.context, task_id=t.id)
           for t in tasks]
    traces = [store.trace(i) for i in ids]
    v1 = store.create_dataset("d", "home", {"how": "all"}, traces)
    v2 = store.create_dataset("d", "home", {"how": "first"}, traces[:1])
    assert (v1.version, v2.version) == (1, 2)
    assert store.dataset("d").version == 2 and store.dataset("d@1").id == v1.id
    assert [t.id for t, _ in store.dataset_items(v1.id)] == ids
    with pytest.raises(UserError, match="unknown dataset 'nope'; known datasets: d"):
        store.dataset("nope")
    with pytest.raises(UserError, match="unknown dataset 'd@7'"):
        store.dataset("d@7")
    with pytest.raises(UserError, match="would be empty"):
        store.create_dataset("e", "home", {}, [])


def test_a_migration_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    from dataengine import migrations

    path = tmp_path / "half.db"
    Store(path).add_tasks(generate_tasks(seed=0, n_train=3, n_dev=0, n_test=0))
    # A future migration whose second statement fails: its first statement must not stay applied.
    broken = ("m999_broken", "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1)")
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    with pytest.raises(Exception, match="no_such_table"):
        Store(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from sqlite_master where name = 'half_done'").fetchone()[0] == 0
        assert conn.execute("select count(*) from _migrations where name = 'm999_broken'").fetchone()[0] == 0
        assert conn.execute("select count(*) from tasks").fetchone()[0] == 3
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
