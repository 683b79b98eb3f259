"""A domain written outside supertiny, in a temp directory, runs end to end through the CLI:
tasks import, agent run, agent generate, traces verify (gold match and the domain's own check),
dataset build -- with no change to supertiny."""
import json
import sqlite3
import textwrap

from tests.test_cli import run

# A small banking domain: a pydantic-model lookup tool, a typed function action, a gold-free
# programmatic check, and its own offline chat model (so `--model planner` works for it).
BANK_DOMAIN = textwrap.dedent('''
    import re
    import uuid

    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from pydantic import BaseModel, Field

    from tools.registry import Domain

    ACCOUNTS = {"alice": "ACC-001", "bob": "ACC-002", "carol": "ACC-003"}


    class LookupAccount(BaseModel):
        """Find the account id of a customer by name."""

        name: str = Field(description="the customer's first name")

        def run(self) -> dict:
            key = self.name.strip().lower()
            if key not in ACCOUNTS:
                raise ValueError(f"no customer named {self.name!r}")
            return {"account_id": ACCOUNTS[key]}


    def transfer(from_account: str, to_account: str, amount: float) -> str:
        """Move money between two accounts.

        Args:
            from_account: account id to take the money from, e.g. "ACC-001".
            to_account: account id to pay into.
            amount: how much, in euros.
        """
        return "ok"


    def check(call, text, context):
        amount = call["arguments"].get("amount", 0)
        if amount <= 0 or amount > context.get("limit", 1000):
            return f"amount {amount} outside (0, {context.get('limit', 1000)}]"
        return None


    class BankPlanner(BaseChatModel):
        """Reads 'send N from X to Y', looks both accounts up, then transfers."""

        temperature: float = 0.0
        seed: int = 0

        @property
        def _llm_type(self):
            return "bank-planner"

        def bind_tools(self, tools, **kwargs):
            return self.bind(**kwargs)

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            request = next(m.content for m in messages if m.type == "human")
            amount, payer, payee = re.search(r"send (\\d+) from (\\w+) to (\\w+)", request.lower()).groups()
            found = [json.loads(m.content)["account_id"] for m in messages
                     if isinstance(m, ToolMessage) and m.status != "error"]
            if not any(isinstance(m, ToolMessage) for m in messages):
                calls = [{"name": "LookupAccount", "args": {"name": who}, "id": uuid.uuid4().hex[:8]}
                         for who in (payer, payee)]
                message = AIMessage(content="", tool_calls=calls)
            elif len(found) == 2:
                args = {"from_account": found[0], "to_account": found[1], "amount": float(amount)}
                message = AIMessage(content="", tool_calls=[{"name": "transfer", "args": args, "id": "t1"}])
            else:
                message = AIMessage(content="I could not find both accounts.")
            message.usage_metadata = {"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}
            return ChatResult(generations=[ChatGeneration(message=message)])


    import json

    DOMAIN = Domain(
        name="bank",
        system_prompt="Look up both accounts, then call transfer once.",
        lookup_functions=[LookupAccount],
        action_functions=[transfer],
        check=check,
        planner=BankPlanner,
    )
''')


def _tasks(path):
    rows = [
        {"id": "bank-1", "input": "send 20 from alice to bob", "context": {"limit": 500},
         "gold": {"name": "transfer", "arguments": {"from_account": "ACC-001", "to_account": "ACC-002", "amount": 20}}},
        {"id": "bank-2", "input": "Send 700 from carol to alice", "context": {"limit": 500},
         "gold": {"name": "transfer", "arguments": {"from_account": "ACC-003", "to_account": "ACC-001", "amount": 700}}},
        {"id": "bank-3", "input": "send 5 from bob to dave", "context": {"limit": 500},
         "gold": {"name": "transfer", "arguments": {"from_account": "ACC-002", "to_account": "ACC-004", "amount": 5}}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_domain_in_a_temp_directory_runs_end_to_end(tmp_path):
    domain_file = tmp_path / "bank_domain.py"
    domain_file.write_text(BANK_DOMAIN)
    db = tmp_path / "bank.db"

    run(["tasks", "import", str(_tasks(tmp_path / "bank.jsonl")), "--domain", str(domain_file)], db, check=True)
    proc = run(["agent", "run", "send 20 from alice to bob", "--domain", str(domain_file), "--json"], db, check=True)
    assert json.loads(proc.stdout)["final_call"] == {
        "name": "transfer", "arguments": {"from_account": "ACC-001", "to_account": "ACC-002", "amount": 20.0}}

    run(["agent", "generate", "--domain", str(domain_file), "--samples", "2", "--temperature", "0"], db, check=True)
    # Later commands find the domain by its name: the database recorded where it came from.
    verified = json.loads(run(["traces", "verify", "--domain", "bank", "--json"], db, check=True).stdout)[0]
    assert verified == {"scored": 6, "passed": 2, "failed": 4}

    with sqlite3.connect(db) as conn:
        assert conn.execute("select spec from domains where name = 'bank'").fetchone()[0] == str(domain_file.resolve())
        scores = dict(conn.execute(
            "select t.task_id || '/' || s.scorer, s.value from scores s join traces t on t.id = s.trace_id "
            "where t.sample_index = 0"))
        # bank-1: right and within the limit; bank-2: matches gold but breaks the domain's check;
        # bank-3: dave has no account -> the tool error went back to the model, no answer.
        assert scores == {"bank-1/gold_match": 1.0, "bank-1/domain_check": 1.0,
                          "bank-2/gold_match": 1.0, "bank-2/domain_check": 0.0,
                          "bank-3/gold_match": 0.0, "bank-3/domain_check": 0.0}
        tool_error = conn.execute(
            "select c.error from tool_calls c join traces t on t.id = c.trace_id "
            "where t.task_id = 'bank-3' and c.error is not null").fetchone()[0]
        assert "no customer named 'dave'" in tool_error

    built = json.loads(run(["dataset", "build", "bank-v", "--domain", "bank", "--json"], db, check=True).stdout)[0]
    assert built["kept"] == 1 and built["dataset"] == "bank-v@1"


def test_a_domain_module_that_fails_to_import_says_why(tmp_path):
    broken = tmp_path / "broken_domain.py"
    broken.write_text("import not_a_real_package_xyz\n")
    proc = run(["agent", "run", "hi", "--domain", str(broken)], tmp_path / "x.db")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not_a_real_package_xyz" in proc.stderr
