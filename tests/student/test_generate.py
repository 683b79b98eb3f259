from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from student.format import direct_completion, direct_prompt, format_call
from student.generate import DirectStudent, Prediction, function_names_of, load_model, quoted_values
from student.tiny import build_tiny_model
from student.train import SFTRunConfig, train_student
from supertiny.errors import UserError

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
STOP = {"name": "stop_all", "arguments": {}}
PLAY = {"name": "play_music", "arguments": {"room": "living", "volume": 4}}
# The second line after the call must never come back: a direct-mode answer is one line.
EXAMPLES = [
    {"prompt": direct_prompt("stop everything", CONTEXT), "completion": direct_completion(STOP) + "\nJUNK JUNK JUNK"},
    {"prompt": direct_prompt("play music in the living room", CONTEXT), "completion": direct_completion(PLAY)},
] * 20


def tiny_base(directory: Path) -> Path:
    return build_tiny_model(directory, [ex["prompt"] + ex["completion"] for ex in EXAMPLES])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    config = SFTRunConfig(
        base_model=str(tiny_base(root / "base")), output_dir=str(root / "student"), learning_rate=3e-3,
        max_steps=120, warmup_ratio=0.0,
    )
    return train_student(EXAMPLES, config)


def test_generation_stops_at_the_end_of_the_first_line(trained):
    student = DirectStudent(trained, max_new_tokens=40)
    prediction = student.predict("stop everything", CONTEXT)
    assert prediction.call == STOP
    assert prediction.raw == format_call(STOP)
    # Stopped on the newline itself, not after generating the junk line.
    assert prediction.completion_tokens <= len(student.tokenizer(direct_completion(STOP) + "\n")["input_ids"])


def test_prediction_fields(trained):
    student = DirectStudent(trained)
    prediction = student.predict("play music in the living room", CONTEXT)
    assert isinstance(prediction, Prediction)
    assert prediction.call == PLAY
    assert prediction.prompt_tokens == len(student.tokenizer(direct_prompt("play music in the living room", CONTEXT))["input_ids"])
    # The call's tokens plus the EOS that ended generation.
    assert prediction.completion_tokens == len(student.tokenizer(direct_completion(PLAY))["input_ids"]) + 1
    assert prediction.latency_ms > 0


def test_predict_many_keeps_order_and_accepts_pairs_or_dicts(trained):
    student = DirectStudent(trained)
    predictions = student.predict_many(
        [("play music in the living room", CONTEXT), {"text": "stop everything", "context": CONTEXT}]
    )
    assert [p.call for p in predictions] == [PLAY, STOP]


def test_untrained_model_output_is_bounded_and_parsed_or_none(tmp_path):
    student = DirectStudent(tiny_base(tmp_path / "base"), max_new_tokens=6)
    prediction = student.predict("stop everything", CONTEXT)
    assert prediction.completion_tokens <= 6
    assert "\n" not in prediction.raw
    assert prediction.call is None or isinstance(prediction.call, dict)


def test_prompt_tokens_match_what_sft_trainer_trained_on(tmp_path):
    # A tokenizer that adds BOS by default: TRL tokenizes prompt+completion with the default
    # special tokens, so the student must add the same BOS at inference, and only once.
    base = tiny_base(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    tokenizer.save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to="none", max_length=128),
        train_dataset=Dataset.from_list(EXAMPLES[1:2]),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    prompt_len = row["labels"].index(next(label for label in row["labels"] if label != -100))
    trained_prompt_ids = row["input_ids"][:prompt_len]
    assert trained_prompt_ids[0] == bos and trained_prompt_ids.count(bos) == 1

    student = DirectStudent(base, max_new_tokens=2)
    prompt = EXAMPLES[1]["prompt"]
    assert student.tokenizer(prompt)["input_ids"] == trained_prompt_ids
    assert student.predict("play music in the living room", CONTEXT).prompt_tokens == len(trained_prompt_ids)


def test_quantized_dir_is_loaded_through_compress(trained, tmp_path):
    from compress.quantize import quantize_int8

    quantize_int8(trained, tmp_path / "q")
    student = DirectStudent(tmp_path / "q")
    # The int8 Linears are there: it was not loaded as a plain float model.
    assert any("quantized" in type(module).__module__ for module in student.model.modules())
    prediction = student.predict("play music in the living room", CONTEXT)
    assert prediction.completion_tokens <= student.max_new_tokens and "\n" not in prediction.raw


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model path not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(UserError, match="model path not found"):
        DirectStudent(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)


def test_function_names_constrain_the_answer(trained):
    free = DirectStudent(trained).predict("stop everything", CONTEXT)
    assert free.call["name"] == "stop_all"
    # Only play_music allowed: the name is forced, the arguments are still decoded.
    forced = DirectStudent(trained, function_names=["play_music", "set_timer"]).predict("stop everything", CONTEXT)
    assert forced.call is not None and forced.call["name"] == "play_music"
    # Among allowed names the model's own choice wins.
    both = DirectStudent(trained, function_names=["play_music", "stop_all"])
    assert both.predict("stop everything", CONTEXT).call == STOP
    assert both.predict("play music in the living room", CONTEXT).call == PLAY


def test_quoted_values_reads_closed_and_open_literals():
    assert quoted_values('PlayMusic(artist="Adele", year="19') == ["Adele", "19"]
    assert quoted_values('f(a="say \\"hi\\"", b=3)') == ['say "hi"']
    assert quoted_values("stop_all()") == []


def test_values_from_request_keep_every_quoted_value_a_span_of_the_request(trained):
    """Trained only on room="living", the model writes "living" for any room; for a domain whose
    values are spans of the request (snips), greedy decoding may only write spans of it."""
    from tools.registry import get_domain

    request = "play music in the kitchen"
    free = DirectStudent(trained).predict(request, CONTEXT)
    assert free.call["arguments"]["room"] == "living"  # the premise: not a span of the request
    spans = DirectStudent(trained, domain=get_domain("snips"))
    assert spans.values_from_request and not DirectStudent(trained).values_from_request
    answer = spans.predict(request, CONTEXT)
    assert answer.call is not None and answer.call["name"] == "play_music"
    assert isinstance(answer.call["arguments"]["room"], str) and answer.call["arguments"]["room"] in request
    # a request that does contain the value is answered as before
    assert spans.predict("play music in the living room", CONTEXT).call == PLAY


def test_function_names_are_found_through_the_manifest_lineage(tmp_path):
    from student.manifest import write_manifest

    (tmp_path / "student").mkdir()
    (tmp_path / "pruned").mkdir()
    write_manifest(tmp_path / "student", kind="student", lineage={"function_names": ["a", "b"]})
    write_manifest(tmp_path / "pruned", kind="pruned", parent=str(tmp_path / "student"))
    assert function_names_of(tmp_path / "pruned") == ["a", "b"]
    assert function_names_of(tmp_path) is None
