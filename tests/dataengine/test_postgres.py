"""The same store on PostgreSQL, through a SQLAlchemy URL (docs/schema.md).

Runs against the server in ``SUPERTINY_TEST_POSTGRES_URL`` (default: the local ``postgres``
superuser on 127.0.0.1:5432) in a fresh database it creates and drops; skipped, saying why,
when psycopg is not installed or no server answers."""
import json
import os
import uuid

import pytest
from sqlalchemy import create_engine, make_url, text

from agent.backends import make_chat_model
from agent.run import run_request
from dataengine.curate import best_of_n, parse_condition, verify_traces
from dataengine.export import chat_records
from dataengine.lineage import dataset_diff, model_lineage
from dataengine.query import TraceFilter
from dataengine.store import Store, TraceRecord
from supertiny.errors import UserError
from tests.test_cli import run
from tools.home.tasks import generate_tasks
from tools.registry import get_domain

SERVER_URL = os.environ.get("SUPERTINY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def postgres_url():
    """A URL of a new, empty database on the test server (dropped afterwards)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'supertiny[postgres]'")
    server = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with server.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:  # any failure to connect means: no server for this test
        server.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        pytest.skip(f"no PostgreSQL server reachable at {make_url(SERVER_URL).render_as_string(hide_password=True)} "
                    f"({reason}); set SUPERTINY_TEST_POSTGRES_URL to run this test")
    name = f"supertiny_test_{uuid.uuid4().hex[:12]}"
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    server.dispose()


def test_the_store_runs_on_postgresql(postgres_url):
    store = Store(postgres_url)
    assert not store.is_sqlite and store.path is None
    Store(postgres_url)  # migrations are recorded: a second open applies nothing

    domain, tasks = get_domain("home"), generate_tasks(seed=0, n_train=3, n_dev=0, n_test=0)
    assert store.add_tasks(tasks) == (3, 0)
    job = store.job_for(kind="generate", domain="home", split="train", model="planner", samples=2, temperature=0.7,
                        seed=0, config={})
    records = []
    for task in tasks:
        for sample in range(2):
            result = run_request(domain, make_chat_model("planner", domain=domain, temperature=0.7, seed=sample),
                                 task.input, task.context)
            records.append(TraceRecord.from_result(result, domain="home", model="planner", input=task.input,
                                                   context=task.context, task_id=task.id, job_id=job.id,
                                                   sample_index=sample))
    ids = store.add_traces(records)
    assert [store.trace(i).sample_index for i in ids] == [0, 1] * 3 and store.add_traces(records[:1]) == ids[:1]
    assert store.add_trace(run_request(domain, make_chat_model("planner", domain=domain), "set a timer for 5 minutes",
                                       tasks[0].context), domain="home", model="planner", input="timer",
                           context={}) == ids[-1] + 1

    verify_traces(store, domain="home", split="train")
    passed = store.trace_summaries(TraceFilter(scores=[parse_condition("gold_match>=1")], split="train"))
    assert passed and all(row["scores"]["gold_match"] == 1.0 for row in passed)
    assert len(store.trace_summaries(TraceFilter(model="planner", limit=2))) == 2

    v1, _ = best_of_n(store, name="mini", domain="home")
    best_of_n(store, name="mini", domain="home", min_score=0.0)
    assert dataset_diff(store, "mini@1", "mini@2")["to"]["items"] == 3
    assert len(chat_records(store, "mini@1")) == len(store.dataset_items(v1.id)) > 0
    student = store.add_model(name="student", kind="student", path="/m/student", config={}, dataset_id=v1.id)
    assert model_lineage(store, str(student.id))["dataset"]["sources"][0]["job"]["id"] == job.id

    result = store.read_only_sql("select status, count(*) from traces group by status")
    assert result.columns == ["status", "count"] and result.rows == [("ok", 7)]
    with pytest.raises(UserError, match="refused"):
        store.read_only_sql("delete from traces")
    assert store.read_only_sql("select count(*) from traces").rows == [(7,)]

    listed = json.loads(run(["--db", postgres_url, "traces", "list", "--json", "--limit", "0"], "unused",
                            check=True).stdout)
    assert len(listed) == 7
    store.engine.dispose()
