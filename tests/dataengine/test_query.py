"""Querying, batch ingest, read-only SQL, imports, lineage and dataset diffs, in process.
(The same through the CLI, and bad input, are in tests/test_cli_data.py.)"""
import json
import sqlite3

import pytest

from dataengine.curate import best_of_n, parse_condition, verify_traces
from dataengine.export import save_hf_dataset
from dataengine.imports import parse_chat_log, parse_tasks_csv
from dataengine.lineage import dataset_diff, model_lineage
from dataengine.query import TraceFilter
from dataengine.schema import TraceRow
from dataengine.store import Store, TraceRecord
from supertiny.errors import UserError
from tests.conftest import store_planner_traces
from tools.home.tasks import generate_tasks
from tools.registry import get_domain


def record(i, **where):
    return TraceRecord(domain="home", model=where.pop("model", "planner"), input=f"request {i}", context={},
                       messages=[{"role": "user", "content": f"request {i} — é 🍕"}],
                       final_call={"name": "set_timer", "arguments": {"duration": f"PT{i + 1}M"}}, status="ok",
                       model_calls=1, model_events=[{"prompt_tokens": 10, "completion_tokens": i}],
                       tool_events=[{"step": 1, "name": "resolve_duration", "args": {"text": f"{i} min"},
                                     "result": f"PT{i + 1}M", "error": None, "latency_ms": 0.5}], **where)


def test_batch_ingest_is_one_transaction_with_ids_in_order_and_samples_stored_once(store):
    tasks = generate_tasks(seed=0, n_train=4, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    job = store.job_for(kind="generate", domain="home", split="train", model="planner", samples=2, temperature=0.0,
                        seed=0, config={})
    records = [record(i, task_id=tasks[i % 4].id, job_id=job.id, sample_index=i // 4) for i in range(8)]
    ids = store.add_traces(records)
    assert ids == sorted(ids) and len(set(ids)) == 8
    assert [store.trace(i).input for i in ids] == [f"request {i}" for i in range(8)]
    assert [c.completion_tokens for c in store.model_calls_of(ids[5])] == [5]
    # a repeat, and a repeat inside the batch, return the stored ids and write nothing
    assert store.add_traces([records[2], record(9), records[2]]) == [ids[2], ids[-1] + 1, ids[2]]
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from traces").fetchone()[0] == 9
        assert conn.execute("select count(*) from tool_calls").fetchone()[0] == 9
    with pytest.raises(Exception):  # a trace of an unknown task breaks a foreign key: the whole batch is refused
        store.add_traces([record(10), record(11, task_id="no-such-task")])
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from traces").fetchone()[0] == 9


@pytest.fixture
def scored(store):
    """Six traces: two models, two splits, scores 1/0/none."""
    store.add_tasks(generate_tasks(seed=0, n_train=2, n_dev=1, n_test=0))
    train, dev = store.tasks(split="train"), store.tasks(split="dev")
    ids = store.add_traces([record(0, task_id=train[0].id), record(1, task_id=train[1].id, model="openai:big"),
                            record(2, task_id=dev[0].id), record(3, task_id=dev[0].id, model="openai:big"),
                            record(4), record(5, model="openai:big")])
    store.set_scores([(ids[0], "gold_match", 1.0, {}), (ids[1], "gold_match", 0.0, {}),
                      (ids[2], "gold_match", 1.0, {}), (ids[3], "judge", 0.75, {})])
    return ids


def test_trace_filters_combine_and_carry_scores(store, scored):
    def ids(**where):
        return [row["id"] for row in store.trace_summaries(TraceFilter(**where))]

    assert ids() == scored
    assert ids(model="openai:big") == [scored[1], scored[3], scored[5]]
    assert ids(split="dev") == [scored[2], scored[3]]
    assert ids(scores=[parse_condition("gold_match>=1")]) == [scored[0], scored[2]]
    assert ids(scores=[parse_condition("gold_match<1")]) == [scored[1]]
    assert ids(scores=[parse_condition("gold_match")], split="dev") == [scored[2]]
    assert ids(scores=[parse_condition("judge>0.5")], model="openai:big") == [scored[3]]
    assert ids(limit=2) == [scored[5], scored[4]]  # the newest first
    row = store.trace_summaries(TraceFilter(model="openai:big", split="dev"))[0]
    assert row["scores"] == {"judge": 0.75} and "messages" not in row and row["input"] == "request 3"


@pytest.mark.parametrize("where,index", [
    ("model = 'x'", "traces_model"), ("status = 'ok'", "traces_status"), ("domain = 'home'", "traces_domain"),
    ("job_id = 1", "traces_job"),
])
def test_list_filters_walk_an_index_newest_first_without_sorting(store, where, index):
    with sqlite3.connect(store.path) as conn:
        plan = " ".join(r[3] for r in conn.execute(f"explain query plan select id from traces where {where} "
                                                   "order by id desc limit 20"))
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan


def test_score_filters_look_up_one_score_row_per_trace(store):
    query = store.select_traces(TraceFilter(scores=[parse_condition("gold_match>=1")], limit=20), TraceRow.id)
    sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
    with sqlite3.connect(store.path) as conn:
        plan = " ".join(r[3] for r in conn.execute(f"explain query plan {sql}"))
    assert "sqlite_autoindex_scores_1 (trace_id=? AND scorer=?)" in plan and "TEMP B-TREE" not in plan


@pytest.mark.parametrize("sql", [
    "delete from traces", "update traces set status = 'x'", "insert into domains values ('a', 'b', 'c')",
    "drop table traces", "create table t (x)", "attach 'elsewhere.db' as other", "pragma journal_mode = delete",
    "pragma user_version = 7", "vacuum", "begin",
])
def test_sql_that_writes_is_refused_and_nothing_changes(store, scored, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refused: only reading statements"):
        store.read_only_sql(sql)
    assert not (tmp_path / "elsewhere.db").exists()  # ATTACH would have created it
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from traces").fetchone()[0] == 6
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert conn.execute("pragma user_version").fetchone()[0] == 0


def test_reading_sql_runs_with_json_functions_and_a_row_limit(store, scored):
    result = store.read_only_sql("select id, json_extract(messages, '$[0].content') as said from traces order by id")
    assert result.columns == ["id", "said"] and result.rows[0] == (scored[0], "request 0 — é 🍕")
    assert store.read_only_sql("select id from traces", limit=4).truncated
    assert [r[1] for r in store.read_only_sql("pragma table_info(traces)").rows][:2] == ["id", "task_id"]
    for bad, message in [("selec 1", "syntax error"), ("select 1; select 2", "one statement"), ("  ", "empty")]:
        with pytest.raises(UserError, match=message):
            store.read_only_sql(bad)


def test_csv_tasks_read_json_cells_and_name_file_line_and_field(store, tmp_path):
    good = tmp_path / "tasks.csv"
    good.write_text('input,split,context,gold\n'
                    '"turn on the tv, please",test,"{""now"": ""2026-01-01T10:00""}",'
                    '"{""name"": ""control_device"", ""arguments"": {""device_id"": ""tv.living_room""}}"\n'
                    '\n'
                    'play Björk 🎵,,,\n', encoding="utf-8")
    tasks = parse_tasks_csv(good, "home")
    assert [(t.id, t.split, t.input) for t in tasks] == [("tasks-000002", "test", "turn on the tv, please"),
                                                          ("tasks-000004", "train", "play Björk 🎵")]
    assert tasks[0].context == {"now": "2026-01-01T10:00"} and tasks[0].gold["name"] == "control_device"
    assert store.import_tasks_csv(good, "home") == (2, 0)
    bad = tmp_path / "bad.csv"
    bad.write_text('input,context\nok,{}\nstill ok,"{""now"": 1"\n')
    with pytest.raises(UserError, match=r"bad.csv:3: field 'context': not valid JSON"):
        parse_tasks_csv(bad, "home")


def test_a_chat_log_line_becomes_a_trace_with_tool_calls_and_the_last_action_as_final_call(tmp_path):
    def call(call_id, name, args):
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

    line = {"messages": [
        {"role": "system", "content": "be useful"},
        {"role": "user", "content": "Context: now=2026-03-14T09:30 weekday=Saturday\nRequest: timer 20 min"},
        {"role": "assistant", "content": None, "tool_calls": [call("a", "resolve_duration", {"text": "20 min"})]},
        {"role": "tool", "tool_call_id": "a", "content": '"PT20M"'},
        {"role": "assistant", "content": "", "tool_calls": [call("b", "set_timer", {"duration": "PT2M"})]},
        {"role": "tool", "tool_call_id": "b", "content": "done"},
        {"role": "user", "content": "no, twenty"},
        {"role": "assistant", "content": "", "tool_calls": [call("c", "set_timer", {"duration": "PT20M"})]},
    ], "metadata": {"source": "prod"}}
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(line, ensure_ascii=False) + "\n\n" + json.dumps({"messages": line["messages"][:4]}) + "\n")
    first, second = parse_chat_log(log, get_domain("home").action_names, "openai:gpt-4o")
    assert first.input == "timer 20 min" and first.context == {"now": "2026-03-14T09:30", "weekday": "Saturday"}
    assert first.final_call == {"name": "set_timer", "arguments": {"duration": "PT20M"}} and first.status == "ok"
    assert [(e["step"], e["name"], e["result"]) for e in first.tool_events] == [(1, "resolve_duration", "PT20M")]
    assert len(first.model_events) == 3 and first.model_events[0]["model"] == "openai:gpt-4o"
    assert second.line == 3 and second.final_call is None and second.status == "no_call"


def test_imported_chat_logs_keep_their_model_as_teacher_and_import_once(store, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"messages": [
        {"role": "user", "content": "lights off"},
        {"role": "assistant", "tool_calls": [{"id": "x", "type": "function", "function": {
            "name": "control_device", "arguments": '{"device_id": "light.kitchen", "action": "off"}'}}]}]}) + "\n")
    counts = store.import_chat_log(log, "home", "openai:gpt-4o")
    assert counts["imported"] == 1 and counts["with_final_call"] == 1
    assert store.import_chat_log(log, "home", "openai:gpt-4o")["already_present"] == 1
    trace = store.trace(store.trace_summaries(TraceFilter())[0]["id"])
    assert trace.model == "openai:gpt-4o" and store.job(trace.job_id).kind == "import"


@pytest.fixture
def lineage_store(store):
    """Real planner traces on four tasks, verified, two dataset versions, and three models."""
    tasks = generate_tasks(seed=0, n_train=4, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    store_planner_traces(store, tasks)
    verify_traces(store, domain="home", split="train")
    v1, _ = best_of_n(store, name="mini", domain="home")
    base = store.add_model(name="base", kind="base", path="/models/base", config={})
    student = store.add_model(name="student", kind="student", path="/models/student", config={}, parent_id=base.id,
                              dataset_id=v1.id)
    store.add_model(name="student-int8", kind="quantized", path="/models/student-int8", config={},
                    parent_id=student.id)
    return store


def test_lineage_walks_parents_to_dataset_traces_job_and_teacher(lineage_store):
    lineage = model_lineage(lineage_store, "student-int8")
    assert lineage["model"]["kind"] == "quantized" and lineage["dataset"] is None
    student = lineage["parent"]
    assert student["model"]["name"] == "student" and student["parent"]["model"]["name"] == "base"
    dataset = student["dataset"]
    assert dataset["ref"] == "mini@1" and dataset["spec"]["method"] == "best_of_n"
    (source,) = dataset["sources"]
    assert source["job"]["kind"] == "generate" and source["teacher"] == "planner"
    assert source["reported_models"] == ["planner"] and source["traces"] == dataset["items"] == 4
    items = lineage_store.dataset_items(lineage_store.dataset("mini@1").id)
    assert source["trace_ids"] == sorted(trace.id for trace, _ in items)
    assert model_lineage(lineage_store, "/models/student")["model"]["name"] == "student"
    assert model_lineage(lineage_store, str(lineage["model"]["id"]))["model"]["kind"] == "quantized"
    with pytest.raises(UserError, match="unknown model 'nope'"):
        model_lineage(lineage_store, "nope")


def test_dataset_diff_reports_added_removed_and_changed_items(lineage_store):
    store = lineage_store
    items = [trace for trace, _ in store.dataset_items(store.dataset("mini@1").id)]
    others = {t.task_id: t for t in store.traces() if t.id not in {i.id for i in items}}
    changed = others[items[1].task_id]
    store.create_dataset("mini", "home", {"how": "by hand"}, [items[0], changed, *items[3:]])
    diff = dataset_diff(store, "mini@1", "mini@2")
    assert diff["from"]["items"] == 4 and diff["to"]["items"] == 3 and diff["unchanged"] == 2
    assert [i["task_id"] for i in diff["removed"]] == [items[2].task_id] and diff["added"] == []
    (item,) = diff["changed"]
    assert (item["from_trace"], item["to_trace"]) == (items[1].id, changed.id)
    assert item["answer_changed"] == (items[1].final_call != changed.final_call)
    assert dataset_diff(store, "mini@2", "mini@1")["added"][0]["task_id"] == items[2].task_id


def test_hf_export_round_trips_through_load_from_disk(lineage_store, tmp_path):
    import datasets

    assert save_hf_dataset(lineage_store, "mini", tmp_path / "hf") == 4
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded.column_names == ["messages", "tools", "dataset", "trace_id", "task_id"]
    row = loaded[0]
    assert row["dataset"] == "mini@1" and row["messages"][-1]["role"] == "assistant"
    assert {t["function"]["name"] for t in json.loads(row["tools"])} >= {"control_device", "find_device"}


def test_a_sqlalchemy_url_names_a_sqlite_file_too(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'via-url.db'}")
    assert store.path == tmp_path / "via-url.db" and store.is_sqlite
    with pytest.raises(UserError, match="--db 'nosuchdriver://x/y'"):
        Store("nosuchdriver://x/y")


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("parse,content,message", [
    (parse_tasks_csv, "input,split\nhi,train,oops\n", "t:2: 3 cells for 2 columns"),
    (parse_tasks_csv, "input,input\nhi,ho\n", "t:1: column 'input' appears twice"),
    (parse_tasks_csv, "id,input\na,hi\nb,ho\na,hey\n", "t:4: field 'id': 'a' is already the id of line 2"),
    (parse_tasks_csv, "", "t: no tasks in file"),
    (parse_tasks_csv, "input\n\n", "t: no tasks in file"),
    (parse_chat_log, '{"tools": []}\n', "t:1: field 'messages': Field required"),
    (parse_chat_log, '{"messages": []}\n', "t:1: field 'messages': List should have at least 1 item"),
    (parse_chat_log, json.dumps({"messages": [{"role": "system", "content": "x"}]}), "t:1: field 'messages': no user"),
    (parse_chat_log, json.dumps({"messages": [USER], "colour": 1}), "t:1: field 'colour': Extra inputs"),
    (parse_chat_log, json.dumps({"messages": [USER, {"role": "assistant", "tool_calls": [{"id": "1"}]}]}),
     "t:1: field 'messages.1.tool_calls.0.function': Field required"),
    (parse_chat_log, json.dumps({"messages": [USER], "context": "now"}), "t:1: field 'context'"),
    (parse_chat_log, "[1, 2]\n", "t:1: field '(line)'"),
    (parse_chat_log, "\n\n", "t: no conversations in file"),
    (parse_chat_log, b"\xef\xbb\xbf" + json.dumps({"messages": [USER]}).encode() + b"\n\xff\n", "t:2: not UTF-8"),
])
def test_parsers_refuse_bad_lines_naming_file_line_and_field(tmp_path, parse, content, message):
    path = tmp_path / "t"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = (path, {"control_device"}, "m") if parse is parse_chat_log else (path, "home")
    with pytest.raises(UserError) as err:
        parse(*args)
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0])) and message in str(err.value)
    assert "\n" not in str(err.value)
