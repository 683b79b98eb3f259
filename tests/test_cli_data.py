"""Querying, datasets, lineage and imports through the CLI as users run it (a subprocess on a real
database file), and bad input: one line on stderr naming where, a non-zero exit, and a database
left exactly as it was. (tests/test_cli.py has the first bad-input kinds; these extend them, and
tests/dataengine/test_query.py checks more variants of each parser in process, where it is cheap.)"""
import json
import sqlite3

import pytest

from dataengine.curate import best_of_n, verify_traces
from dataengine.store import Store
from tests.conftest import store_planner_traces
from tests.test_cli import run
from tools.home.tasks import generate_tasks

TABLES = ("tasks", "jobs", "traces", "model_calls", "tool_calls", "scores", "datasets", "dataset_items", "models",
          "domains")


def snapshot(db):
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        return {table: conn.execute(f"select count(*) from {table}").fetchone()[0] for table in TABLES}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Real planner traces (2 samples of 6 tasks, one job), verified; mini@1 (passing traces) and
    mini@2 (every answered trace); a base model, a student trained on mini@1, its int8 child."""
    db = tmp_path_factory.mktemp("cli-data") / "data.db"
    store = Store(db)
    tasks = generate_tasks(seed=0, n_train=6, n_dev=0, n_test=0)
    store.add_tasks(tasks)
    store_planner_traces(store, tasks)
    verify_traces(store, domain="home", split="train")
    mini1, _ = best_of_n(store, name="mini", domain="home")
    best_of_n(store, name="mini", domain="home", min_score=0.0)
    base = store.add_model(name="base", kind="base", path="/models/base", config={})
    student = store.add_model(name="student", kind="student", path="/models/student", config={}, parent_id=base.id,
                              dataset_id=mini1.id)
    store.add_model(name="student-int8", kind="quantized", path="/models/student-int8", config={}, parent_id=student.id)
    return db


def test_traces_list_filters_by_model_score_and_split(db):
    def listed(*args):
        return json.loads(run(["traces", "list", "--json", *args], db, check=True).stdout)

    everything = listed("--limit", "0")
    assert len(everything) == 12 and [t["id"] for t in everything] == sorted(t["id"] for t in everything)
    passed = listed("--score", "gold_match>=1", "--limit", "0")
    assert passed and all(t["scores"]["gold_match"] == 1.0 for t in passed)
    assert {t["id"] for t in listed("--score", "gold_match<1", "--limit", "0")} == \
        {t["id"] for t in everything} - {t["id"] for t in passed}
    assert listed("--model", "openai:none") == [] and len(listed("--split", "train", "--limit", "3")) == 3
    assert len(listed("--job", "1", "--status", "ok", "--domain", "home", "--limit", "0")) == 12


def test_traces_show_is_a_tree_of_model_calls_tool_calls_final_call_and_scores(db):
    shown = run(["traces", "show", "1"], db, check=True).stdout
    for part in ("trace 1", "model call 1", "tokens", " ms", "✓", "⇒ final call", "scores", "gold_match"):
        assert part in shown, part
    data = json.loads(run(["traces", "show", "1", "--json"], db, check=True).stdout)
    assert data["model_calls"][0]["step"] == 1 and data["tool_calls"] and data["scores"]


def test_traces_sql_reads_through_a_read_only_connection(db):
    rows = json.loads(run(["traces", "sql", "select status, count(*) as n from traces group by status", "--json"],
                          db, check=True).stdout)
    assert rows == [{"status": "ok", "n": 12}]
    table = run(["traces", "sql", "select json_extract(final_call, '$.name') as action from traces limit 1"], db,
                check=True).stdout
    assert "action" in table


def test_dataset_diff_lineage_and_export_formats(db, tmp_path):
    diff = json.loads(run(["dataset", "diff", "mini@1", "mini@2", "--json"], db, check=True).stdout)
    assert diff["from"]["ref"] == "mini@1" and diff["to"]["items"] == diff["from"]["items"] + len(diff["added"])
    assert "mini@1" in run(["dataset", "diff", "mini@1", "mini@2"], db, check=True).stdout

    lineage = json.loads(run(["lineage", "student-int8", "--json"], db, check=True).stdout)
    source = lineage["parent"]["dataset"]["sources"][0]
    assert source["job"]["id"] == 1 and source["teacher"] == "planner"
    tree = run(["lineage", "/models/student"], db, check=True).stdout
    assert "dataset mini@1" in tree and "job 1" in tree and "teacher planner" in tree and "parent" in tree

    direct = [json.loads(line) for line in run(["dataset", "export", "mini", "--format", "direct"], db,
                                               check=True).stdout.splitlines()]
    assert direct and direct[0]["prompt"].endswith("\n=>") and direct[0]["completion"].startswith(" ")
    proc = run(["dataset", "export", "mini@1", "--format", "hf", "--out", str(tmp_path / "hf")], db, check=True)
    assert "wrote" in proc.stderr and (tmp_path / "hf" / "dataset_info.json").is_file()


def test_csv_tasks_and_chat_log_traces_import(tmp_path):
    db = tmp_path / "import.db"
    csv_file = tmp_path / "tasks.csv"
    csv_file.write_text('id,input,context\nc1,turn off the tv,"{""now"": ""2026-01-01T10:00""}"\n', encoding="utf-8")
    assert json.loads(run(["tasks", "import", str(csv_file), "--json"], db, check=True).stdout)[0]["inserted"] == 1
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"task_id": "c1", "messages": [
        {"role": "user", "content": "turn off the tv"},
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
            "name": "control_device", "arguments": '{"device_id": "tv.living_room", "action": "off"}'}}]}]}) + "\n")
    counts = json.loads(run(["traces", "import", str(log), "--model", "openai:gpt-4o", "--json"], db,
                            check=True).stdout)[0]
    assert counts["imported"] == 1 and counts["with_final_call"] == 1
    listed = json.loads(run(["traces", "list", "--model", "openai:gpt-4o", "--json"], db, check=True).stdout)
    assert listed[0]["task_id"] == "c1" and listed[0]["final_call"]["name"] == "control_device"


def chat(*messages, **extra):
    return json.dumps({"messages": list(messages), **extra})


USER = {"role": "user", "content": "lights off"}


def action(arguments):
    return {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                 "function": {"name": "control_device", "arguments": arguments}}]}


# (kind, file name, bytes or text or None (a directory), command, what stderr must say; {f} is the file)
BAD_FILES = [
    ("malformed JSONL line", "t.jsonl", '{"input": "ok"}\n{"input": "hi",\n', ["tasks", "import", "{f}"],
     "{f}:2: not valid JSON"),
    ("latin-1 bytes", "t.jsonl", b'{"input": "ok"}\n{"input": "caf\xe9"}\n', ["tasks", "import", "{f}"],
     "{f}:2: not UTF-8 (byte 0xe9 at column 15)"),
    ("UTF-16 byte-order mark", "t.jsonl", '{"input": "ok"}\n'.encode("utf-16"), ["tasks", "import", "{f}"],
     "{f}: is UTF-16"),
    ("unknown field", "t.jsonl", '{"input": "ok", "colour": "red"}\n', ["tasks", "import", "{f}"],
     "{f}:1: field 'colour': Extra inputs are not permitted"),
    ("missing required field", "t.jsonl", '{"input": "ok"}\n{"split": "dev"}\n', ["tasks", "import", "{f}"],
     "{f}:2: field 'input': Field required"),
    ("gold without a function name", "t.jsonl", '{"input": "ok", "gold": {"arguments": {}}}\n',
     ["tasks", "import", "{f}"], "{f}:1: field 'gold'"),
    ("empty file", "t.jsonl", "", ["tasks", "import", "{f}"], "{f}: no tasks in file"),
    ("missing file", "absent.jsonl", ..., ["tasks", "import", "{f}"], "task file not found: {f}"),
    ("directory instead of a file", "folder.jsonl", None, ["tasks", "import", "{f}"], "{f}: is a directory"),
    ("unknown CSV column", "t.csv", "input,colour\nhi,red\n", ["tasks", "import", "{f}"],
     "{f}:1: unknown column 'colour'"),
    ("CSV without the input column", "t.csv", "id,split\na,train\n", ["tasks", "import", "{f}"],
     "{f}:1: missing required column 'input'"),
    ("CSV cell that is not JSON", "t.csv", 'input,gold\nok,\nhi,{name}\n', ["tasks", "import", "{f}"],
     "{f}:3: field 'gold': not valid JSON"),
    ("CSV cell of the wrong type", "t.csv", 'input,context\nhi,"[1, 2]"\n', ["tasks", "import", "{f}"],
     "{f}:2: field 'context': Input should be a valid dictionary"),
    ("chat log with an unknown role", "c.jsonl", chat({"role": "robot", "content": "hi"}) + "\n",
     ["traces", "import", "{f}", "--model", "m"], "{f}:1: field 'messages.0.role'"),
    ("tool-call arguments that are not JSON", "c.jsonl", chat(USER, action("{device: 1}")) + "\n",
     ["traces", "import", "{f}", "--model", "m"],
     "{f}:1: field 'messages.1.tool_calls.0.function.arguments': not valid JSON"),
    ("chat log naming an unknown task", "c.jsonl", chat(USER, task_id="nope") + "\n",
     ["traces", "import", "{f}", "--model", "m"], "{f}:1: field 'task_id': no task 'nope'"),
    ("SNIPS directory without SNIPS files", "snips", None, ["tasks", "import", "{f}", "--domain", "snips"],
     "{f}: no SNIPS files"),
    ("SNIPS file with an unknown slot", "train_PlayMusic.json",
     json.dumps({"PlayMusic": [{"data": [{"text": "red", "entity": "colour"}]}]}),
     ["tasks", "import", "{f}", "--domain", "snips"], "slot 'colour' is not an argument of PlayMusic"),
]


@pytest.mark.parametrize("kind,name,content,args,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_are_refused_naming_file_line_and_field(db, tmp_path, kind, name, content, args, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not ...:
        path.write_text(content, encoding="utf-8")
    assert_refused(db, [a.format(f=path) for a in args], message.format(f=path))


BAD_COMMANDS = [
    ("SQL that deletes", ["traces", "sql", "delete from traces"], "refused: only reading statements"),
    ("SQL that attaches another file", ["traces", "sql", "attach 'other.db' as other"], "refused"),
    ("SQL syntax error", ["traces", "sql", "selec * from traces"], 'sql: near "selec": syntax error'),
    ("two SQL statements", ["traces", "sql", "select 1; delete from traces"], "one statement at a time"),
    ("unknown dataset in a diff", ["dataset", "diff", "nope", "mini@1"], "unknown dataset 'nope'; known datasets: mini"),
    ("unknown dataset version", ["dataset", "diff", "mini@1", "mini@9"], "unknown dataset 'mini@9'"),
    ("unknown model for lineage", ["lineage", "nope"], "unknown model 'nope': give a model id, name or path"),
    ("bad --score filter", ["traces", "list", "--score", "gold_match>>1"], "--score 'gold_match>>1': use SCORER"),
    ("hf export without --out", ["dataset", "export", "mini", "--format", "hf"], "--format hf writes a directory"),
    ("--db URL without its driver", ["--db", "mysql://user@localhost/db", "traces", "list"],
     "--db 'mysql://user@localhost/db'"),
]


@pytest.mark.parametrize("kind,args,message", BAD_COMMANDS, ids=[case[0] for case in BAD_COMMANDS])
def test_bad_commands_are_refused_in_one_line(db, tmp_path, monkeypatch, kind, args, message):
    monkeypatch.chdir(tmp_path)
    assert_refused(db, args, message)
    assert list(tmp_path.iterdir()) == []  # not even ATTACH created a file


def assert_refused(db, args, message):
    before = snapshot(db)
    proc = run(args, db)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(db) == before
