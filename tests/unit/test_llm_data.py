"""LLM recipe, without a model: formatting, masking, truncation, reasoning-gym data, scoring, policy, ranks."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lightning_curricula.recipes.llm.data import (  # noqa: E402
    IGNORE_INDEX,
    CausalLMCollator,
    detect_shape,
    ensure_pad_token,
    load_instruction_dataset,
    normalized_match,
    prepare_dataset,
    render,
    response_only,
    split_by_difficulty,
    to_conversation,
    truncate,
)
from lightning_curricula.recipes.llm.model import tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.report import spearman  # noqa: E402

from lightning_curricula import CurriculumSampler, EpochContext, ScoreCurriculum, TrainingDynamics  # noqa: E402

QA = {"question": ["Calculate 2 + 3.", "Calculate 12 * 7 - 4."], "answer": ["5", "80"]}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def plain_tokenizer():
    return ensure_pad_token(tiny_tokenizer(chat_template=False))


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    ("columns", "shape"),
    [
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["question", "answer", "metadata"], "question_answer"),
        (["messages"], "messages"),
        (["prompt", "completion"], "prompt_completion"),
    ],
)
def test_detect_shape(columns, shape):
    assert detect_shape(columns) == shape


def test_missing_columns_error_names_columns_and_shapes(tokenizer):
    rows = datasets.Dataset.from_dict({"sentence": ["a"], "label": [1]})
    with pytest.raises(ValueError, match=r"columns \['label', 'sentence'\]") as error:
        prepare_dataset(rows, tokenizer)
    for shape in ("alpaca", "question_answer", "messages", "prompt_completion", "text"):
        assert shape in str(error.value)
    with pytest.raises(ValueError, match="needs columns"):
        prepare_dataset(datasets.Dataset.from_dict(QA), tokenizer, shape="alpaca")


def test_conversations_of_each_shape():
    alpaca = to_conversation({"instruction": "Add.", "input": "", "output": "5"}, "alpaca")
    assert alpaca == ([{"role": "user", "content": "Add."}], "5")
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "and 4 + 4?"},
        {"role": "assistant", "content": "8"},
    ]
    prompt, response = to_conversation({"messages": chat}, "messages", system_prompt="ignored")
    assert response == "8"
    assert prompt == chat[:-1]  # multi-turn: the last assistant turn is the one generated and graded
    prompt, _ = to_conversation({"question": "q", "answer": 3}, "question_answer", system_prompt="S")
    assert prompt[0] == {"role": "system", "content": "S"}
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        to_conversation({"messages": chat[:-1]}, "messages")


def test_render_with_chat_template_splits_the_templated_conversation(tokenizer):
    prompt = [{"role": "user", "content": "2 + 3?"}]
    prompt_text, response_text = render(prompt, "5", tokenizer)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": "5"}], tokenize=False)
    assert prompt_text + response_text == full
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert response_text.startswith("5<|im_end|>")


def test_render_without_chat_template_uses_the_plain_format(plain_tokenizer):
    prompt_text, response_text = render([{"role": "user", "content": "2 + 3?"}], "5", plain_tokenizer)
    assert prompt_text == "### User:\n2 + 3?\n\n### Assistant:\n"
    assert response_text == "5" + plain_tokenizer.eos_token


# ------------------------------------------------------------------------------------------ tokens and masks


@pytest.mark.parametrize("fixture", ["tokenizer", "plain_tokenizer"])
def test_labels_mask_the_prompt_and_keep_the_response(fixture, request):
    tok = request.getfixturevalue(fixture)
    prepared, counts = prepare_dataset(datasets.Dataset.from_dict(QA), tok, max_length=128)
    assert counts.dropped == []
    for row, answer in zip(prepared, QA["answer"], strict=True):
        n = row["prompt_length"]
        assert row["labels"][:n] == [IGNORE_INDEX] * n
        assert row["labels"][n:] == row["input_ids"][n:]
        assert IGNORE_INDEX not in row["labels"][n:]
        response = tok.decode(row["input_ids"][n:])
        assert response.startswith(answer)
        assert row["reference"] == answer
        assert tok.eos_token in response
        assert row["length"] == len(row["input_ids"]) == n + row["response_length"]  # sortable length signals
    assert prepared["source_index"][:] == [0, 1]


def test_tokenizer_without_pad_token_gets_eos(caplog):
    tok = tiny_tokenizer()
    assert tok.pad_token is None
    with caplog.at_level(logging.INFO, logger="lightning_curricula.recipes.llm.data"):
        prepare_dataset(datasets.Dataset.from_dict(QA), tok)
    assert tok.pad_token == tok.eos_token
    assert "no pad token" in caplog.text
    bare = tiny_tokenizer()
    bare.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        ensure_pad_token(bare)


def test_truncate_rule():
    prompt, response = list(range(10)), [100, 101, 102]
    assert truncate(prompt, response, 20) == (prompt, response)
    assert truncate(prompt, response, 8) == ([5, 6, 7, 8, 9], response)  # prompt cut from the left
    assert truncate(prompt, response, 3) == ([9], [100, 101])  # min_prompt_tokens=1, then the response's tail
    assert truncate(prompt, response, 12, side="right") == (prompt, [100, 101])
    assert truncate(prompt, response, 10, side="right") == (prompt, [])


def test_too_long_examples_are_cut_as_documented_and_logged(tokenizer, caplog):
    long_question = "Calculate " + " + ".join(str(i) for i in range(60)) + "."
    rows = datasets.Dataset.from_dict({"question": [long_question, "Calculate 1 + 1."], "answer": ["1770", "2"]})
    full, _ = prepare_dataset(rows, tokenizer, max_length=512)
    response_length = len(full[0]["input_ids"]) - full[0]["prompt_length"]
    with caplog.at_level(logging.WARNING, logger="lightning_curricula.recipes.llm.data"):
        cut, counts = prepare_dataset(rows, tokenizer, max_length=40)
    assert counts.prompt_truncated == 1
    assert counts.response_truncated == 0
    assert len(cut[0]["input_ids"]) == 40
    assert cut[0]["input_ids"][-response_length:] == full[0]["input_ids"][-response_length:]  # response kept
    assert (
        cut[0]["input_ids"][: cut[0]["prompt_length"]]
        == full[0]["input_ids"][: full[0]["prompt_length"]][-(40 - response_length) :]
    )
    assert cut[1]["input_ids"] == full[1]["input_ids"]
    assert "1 had their prompt cut from the left" in caplog.text


def test_fully_truncated_response_is_dropped_and_counted(tokenizer, caplog):
    long_question = "Calculate " + " + ".join(str(i) for i in range(60)) + "."
    rows = datasets.Dataset.from_dict({"question": ["Calculate 1 + 1.", long_question], "answer": ["2", "1770"]})
    with caplog.at_level(logging.WARNING, logger="lightning_curricula.recipes.llm.data"):
        prepared, counts = prepare_dataset(rows, tokenizer, max_length=40, truncation="right")
    assert counts.dropped == [1]
    assert len(prepared) == 1
    assert prepared[0]["source_index"] == 0
    assert "1 were dropped because no response token was left (source ids [1])" in caplog.text
    with pytest.raises(ValueError, match="No example is left"):
        prepare_dataset(rows.select([1]), tokenizer, max_length=40, truncation="right")
    with pytest.raises(ValueError, match="max_length"):
        prepare_dataset(rows, tokenizer, max_length=1)


def test_collator_pads_right_for_training_and_left_for_generation(tokenizer):
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict(QA), tokenizer)
    rows = [{**prepared[i], "index": i, "weight": 1.5} for i in range(2)]
    batch = CausalLMCollator(tokenizer, generation=True)(rows)
    lengths = [len(row["input_ids"]) for row in rows]
    for i, row in enumerate(rows):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert set(batch["labels"][i, n:].tolist()) <= {IGNORE_INDEX}
        prompt = row["input_ids"][: row["prompt_length"]]
        assert batch["prompt_input_ids"][i, -len(prompt) :].tolist() == prompt
        assert batch["prompt_attention_mask"][i].sum() == len(prompt)
    assert batch["index"].tolist() == [0, 1]
    assert batch["weight"].dtype == torch.float32
    assert batch["reference"] == QA["answer"]


def test_collator_pads_training_rows_right_whatever_the_tokenizer_says(tokenizer):
    left = copy.copy(tokenizer)
    left.padding_side = "left"
    batch = CausalLMCollator(left)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1},
            {"input_ids": [5, 8], "labels": [-100, 8], "prompt_length": 1},
        ]
    )
    assert batch["input_ids"][1].tolist() == [5, 8, tokenizer.pad_token_id]
    assert batch["labels"][1].tolist() == [-100, 8, IGNORE_INDEX]
    assert left.padding_side == "left"  # the caller's tokenizer is left alone


def test_response_only_keeps_exactly_the_response_tokens(tokenizer):
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict(QA), tokenizer)
    batch = CausalLMCollator(tokenizer)([prepared[0], prepared[1]])
    alone = response_only(batch, tokenizer.bos_token_id, tokenizer.pad_token_id)
    for i in range(2):
        response = prepared[i]["input_ids"][prepared[i]["prompt_length"] :]
        n = len(response)
        assert alone["input_ids"][i, : n + 1].tolist() == [tokenizer.bos_token_id, *response]
        assert alone["labels"][i, : n + 1].tolist() == [IGNORE_INDEX, *response]
        assert int((alone["labels"][i] != IGNORE_INDEX).sum()) == int((batch["labels"][i] != IGNORE_INDEX).sum())


# ------------------------------------------------------------------------------------------ users' shapes

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and 4 + 4?"},
    {"role": "assistant", "content": "8"},
]
#: TRL's conversational prompt/completion rows: lists of messages in both columns.
TRL_ROWS = {
    "prompt": [CHAT[:2], [{"role": "user", "content": "Calculate 12 * 7 - 4."}]],
    "completion": [[{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "80"}]],
}


def loss_runs(row):
    """The token ids of each run of consecutive positions that carry loss."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return [*runs, current] if current else runs


def test_conversational_prompt_completion_rows_are_read_as_messages(tokenizer):
    row = {name: column[0] for name, column in TRL_ROWS.items()}
    prompt, response = to_conversation(row, "prompt_completion")
    assert prompt == CHAT[:2]
    assert response == "5"
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict(TRL_ROWS), tokenizer)
    for i, row in enumerate(prepared):
        n = row["prompt_length"]
        prompt = tokenizer.apply_chat_template(TRL_ROWS["prompt"][i], tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(row["input_ids"][:n]) == prompt
        assert row["labels"][:n] == [IGNORE_INDEX] * n  # loss on the completion only
        answer = TRL_ROWS["completion"][i][0]["content"]
        assert [tokenizer.decode(run) for run in loss_runs(row)] == [answer + "<|im_end|>\n"]
        assert row["reference"] == answer


@pytest.mark.parametrize(("fixture", "end"), [("tokenizer", "<|im_end|>\n"), ("plain_tokenizer", "</s>")])
def test_every_assistant_turn_of_a_chat_carries_loss(fixture, end, request):
    tok = request.getfixturevalue(fixture)
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict({"messages": [CHAT]}), tok)
    (row,) = prepared
    assert [tok.decode(run) for run in loss_runs(row)] == ["5" + end, "8" + end]
    assert row["reference"] == "8"  # generation answers the last turn
    assert tok.decode(row["input_ids"][row["prompt_length"] :]) == "8" + end
    if fixture == "tokenizer":
        assert tok.decode(row["input_ids"]) == tok.apply_chat_template(CHAT, tokenize=False)
    else:
        assert tok.decode(row["input_ids"], skip_special_tokens=True) == (
            "### System:\nBe brief.\n\n### User:\n2 + 3?\n\n### Assistant:\n5\n\n"
            "### User:\nand 4 + 4?\n\n### Assistant:\n8"
        )


def test_text_rows_carry_loss_on_every_token(tokenizer):
    texts = ["The sum of 2 and 3 is 5.", "Seven is an odd number; " * 8]
    rows = datasets.Dataset.from_dict({"text": texts})
    assert detect_shape(rows.column_names) == "text"
    prepared, counts = prepare_dataset(rows, tokenizer, max_length=24)
    assert counts.response_truncated == 1  # the long text loses its tail
    for row, text in zip(prepared, texts, strict=True):
        assert row["prompt_length"] == 0
        assert row["labels"] == row["input_ids"]
        assert row["response_length"] == row["length"] == len(row["input_ids"]) <= 24
        assert row["reference"] == ""
        assert row["prompt"] == text  # shown by the hardest-examples view
    assert tokenizer.decode(prepared[0]["input_ids"]) == texts[0] + tokenizer.eos_token
    assert tokenizer.decode(prepared[1]["input_ids"]).startswith("Seven is an odd number;")
    with pytest.raises(ValueError, match="text shape has no prompt"):
        to_conversation({"text": texts[0]}, "text")


def test_ifd_on_text_rows_is_refused_with_the_reason(tokenizer):
    prepared, _ = prepare_dataset(datasets.Dataset.from_dict({"text": ["Two and two make four."]}), tokenizer)
    batch = CausalLMCollator(tokenizer)(list(prepared))
    with pytest.raises(ValueError, match="IFD needs a prompt"):
        response_only(batch, tokenizer.bos_token_id, tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------ sources


def test_local_json_and_parquet_files(tmp_path, tokenizer):
    rows = datasets.Dataset.from_dict({"instruction": ["Add.", "Sub."], "input": ["2 3", "5 1"], "output": ["5", "4"]})
    rows.to_json(str(tmp_path / "rows.jsonl"))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("rows.jsonl", "rows.parquet"):
        loaded = load_instruction_dataset(str(tmp_path / name))
        assert loaded.column_names == ["instruction", "input", "output"]
        prepared, _ = prepare_dataset(loaded, tokenizer)
        assert len(prepared) == 2
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .json"):
        load_instruction_dataset(str(tmp_path / "rows.txt"))


def test_reasoning_gym_difficulty_comes_from_metadata_with_a_spread():
    pytest.importorskip("reasoning_gym")
    from lightning_curricula.recipes.llm.data import load_reasoning_gym

    rows = load_reasoning_gym("basic_arithmetic", size=200, seed=3)
    difficulty = torch.tensor(list(rows["difficulty"]))
    assert float(difficulty.min()) >= 0.0
    assert float(difficulty.max()) <= 1.0
    assert len(set(difficulty.tolist())) >= 5  # min_terms..max_terms x min_digits..max_digits spreads it
    for row in rows.select(range(20)):
        metadata = json.loads(row["metadata"])
        low, high = metadata["difficulty"]["num_terms"]
        assert row["difficulty_num_terms"] == pytest.approx((metadata["num_terms"] - low) / (high - low))
    terms = torch.tensor([json.loads(m)["num_terms"] for m in rows["metadata"]], dtype=torch.float64)
    assert spearman(terms, difficulty.double()) > 0.5
    again = load_reasoning_gym("basic_arithmetic", size=200, seed=3)
    assert list(again["question"]) == list(rows["question"])  # seeded


def test_reasoning_gym_levels_and_tasks_without_per_example_difficulty():
    pytest.importorskip("reasoning_gym")
    from lightning_curricula.recipes.llm.data import load_reasoning_gym

    with pytest.raises(ValueError, match="no per-example difficulty"):
        load_reasoning_gym("simple_equations", size=4, seed=0)
    rows = load_reasoning_gym(
        "simple_equations", size=9, seed=0, levels=[{"max_terms": 2}, {"max_terms": 3}, {"max_terms": 4}]
    )
    assert list(rows["difficulty"]) == [0.0] * 3 + [0.5] * 3 + [1.0] * 3
    assert list(rows["difficulty_level"]) == [0.0] * 3 + [1.0] * 3 + [2.0] * 3


def test_reasoning_gym_scorer_and_fallback():
    pytest.importorskip("reasoning_gym")
    from lightning_curricula.recipes.llm.data import load_reasoning_gym, make_scorer

    rows = load_reasoning_gym("basic_arithmetic", size=3, seed=1)
    score = make_scorer("basic_arithmetic")
    for row in rows:
        example = {"reference": row["answer"], "metadata": row["metadata"]}
        assert score(row["answer"], example) == 1.0
        assert score(f" {row['answer']}\n", example) == 1.0
        assert score("not a number", example) == 0.0
    assert make_scorer()("1,000.", {"reference": "1000"}) == 1.0


def test_normalized_match():
    assert normalized_match("  The  Answer. ", "the answer") == 1.0
    assert normalized_match("4.50", "4.5") == 1.0
    assert normalized_match("45", "4.5") == 0.0


def test_split_by_difficulty():
    rows = datasets.Dataset.from_dict({"difficulty": [0.5, 0.0, 1.0, 0.0, 0.5, 1.0, 0.2, 0.8]})
    easy, hard = split_by_difficulty(rows, 0.25)
    assert list(easy["difficulty"]) == [0.0, 0.0]
    assert list(hard["difficulty"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="do not overlap"):
        split_by_difficulty(rows, 0.6)


# ------------------------------------------------------------------------------------------ policy, schedule, ranks


def _context(epoch, n, num_epochs=4, seed=0):
    return EpochContext(
        epoch=epoch,
        num_examples=n,
        generator=torch.Generator().manual_seed(seed + epoch),
        seed=seed,
        num_epochs=num_epochs,
    )


def test_score_curriculum_paces_easiest_first_nested():
    scores = torch.tensor([3.0, 0.0, 2.0, 1.0, 0.0, 3.0, 1.0, 2.0, 0.0, 1.0])
    policy = ScoreCurriculum(scores=scores, start=0.3, saturation=1.0)
    planned = [set(policy.plan(_context(epoch, 10)).indices.tolist()) for epoch in range(4)]
    assert [len(p) for p in planned] == [policy.epoch_size(10, e, 4) for e in range(4)] == [3, 6, 8, 10]
    assert planned[0] == {1, 4, 8}
    assert planned[0] <= planned[1] <= planned[2] <= planned[3]
    assert max(scores[list(planned[1])]) <= 1.0
    hard = ScoreCurriculum(scores=scores, order="hard_to_easy", keep=0.2)
    assert set(hard.plan(_context(2, 10)).indices.tolist()) == {0, 5}
    assert hard.varies_length is False


def test_score_curriculum_validation_and_binding():
    policy = ScoreCurriculum("difficulty", start=0.5)
    clock = TrainingDynamics(num_examples=4)  # a paced plan changes size: the sampler wants the tracker's clock
    with pytest.raises(ValueError, match="has no scores"):
        CurriculumSampler(range(4), policy, num_epochs=2, dynamics=clock)
    with pytest.raises(ValueError, match="scores has 3 entries, the dataset has 4"):
        CurriculumSampler(range(4), policy.with_scores(torch.zeros(3)), num_epochs=2, dynamics=clock)
    sampler = CurriculumSampler(range(4), policy.with_scores(torch.arange(4.0)), num_epochs=2, dynamics=clock)
    assert sampler.planned_steps(batch_size=2) == 1 + 2
    fixed = CurriculumSampler(range(10), ScoreCurriculum(scores=torch.arange(10.0), keep=0.3), num_epochs=2)
    assert sorted(index for index, _ in fixed) == [0, 1, 2]  # a fixed share needs no tracker
    random = ScoreCurriculum(order="random", keep=0.5)
    assert len(random.plan(_context(0, 10))) == 5
    with pytest.raises(ValueError, match="order"):
        ScoreCurriculum(order="sideways")


def test_spearman_with_ties_matches_scipy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (200,), generator=generator).double()
    y = x + torch.randn(200, generator=generator, dtype=torch.float64)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-5)
    y[:10] = math.nan
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x[10:].numpy(), y[10:].numpy()).statistic, abs=1e-5)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
