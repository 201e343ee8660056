"""Instruction data for causal-LM fine-tuning: formatting, response-only labels, reasoning-gym tasks, scoring.

The pipeline is ``rows -> messages with loss flags -> text pieces with loss flags -> token ids``:

1. `to_messages` reads a row in one of the `SHAPES` (Alpaca, question/answer, chat ``messages``,
   prompt/completion with text or with TRL's lists of messages) as a conversation and which of its
   messages carry loss (the assistant's); `to_conversation` is its last turn alone, the prompt and
   the response that generation answers and scoring grades.
2. `render_turns` turns the conversation into text turn by turn with the tokenizer's chat template (or
   `PLAIN_TEMPLATE` when it has none), each piece marked as trained or not.
3. `prepare_dataset` tokenises the pieces separately, so that ``labels`` are ``IGNORE_INDEX`` (-100)
   on every token that is not an assistant's answer, and applies the `truncate` rule to over-long
   examples (logged with counts, never a silent NaN). Rows of the ``text`` shape (continued
   pretraining) are tokenised as they are, with loss on every token.

`load_reasoning_gym` generates problems with a known difficulty; `make_scorer` grades generated
answers with reasoning-gym's own checker, or `normalized_match` for other data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "PLAIN_TEMPLATE",
    "REASONING_GYM_DEFAULTS",
    "SHAPES",
    "CausalLMCollator",
    "PreparedData",
    "Scorer",
    "detect_shape",
    "ensure_pad_token",
    "load_instruction_dataset",
    "load_reasoning_gym",
    "make_scorer",
    "normalized_match",
    "prepare_dataset",
    "render",
    "render_turns",
    "response_only",
    "split_by_difficulty",
    "to_conversation",
    "to_messages",
    "truncate",
]

log = logging.getLogger(__name__)

#: Label of tokens that carry no loss (the prompt, the padding): PyTorch's ``cross_entropy`` default.
IGNORE_INDEX = -100

#: Dataset shapes: name -> the columns that identify it (optional columns in the docstring of `to_messages`),
#: detected in this order. ``text`` is plain text for continued pretraining: loss on every token.
SHAPES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "question_answer": ("question", "answer"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
#: The number of characters of a ``text`` row kept in the ``prompt`` column (what the hardest-examples view shows).
_TEXT_PREVIEW = 256

#: Prompt format for a tokenizer without a chat template: one block per message, then the assistant's header.
PLAIN_TEMPLATE = "### {role}:\n{content}\n\n"
_PLAIN_GENERATION_PROMPT = "### Assistant:\n"

#: Default generator settings per reasoning-gym task: a wide range, so that difficulties spread.
REASONING_GYM_DEFAULTS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 5, "min_digits": 1, "max_digits": 2},
    "chain_sum": {"min_terms": 2, "max_terms": 6, "min_digits": 1, "max_digits": 3},
}

Truncation = Literal["prompt", "right"]
Message = dict[str, str]
#: ``scorer(prediction, row) -> score in [0, 1]``; 1 is a correct answer. ``row`` has ``reference``
#: (the reference answer) and, for reasoning-gym data, ``metadata`` (a JSON string).
Scorer = Callable[[str, Mapping[str, Any]], float]


# ------------------------------------------------------------------------------------------------ shapes


def detect_shape(columns: Sequence[str]) -> str:
    """The name of the shape in `SHAPES` that a dataset with these columns has.

    Args:
        columns: the dataset's column names.

    Raises:
        ValueError: no shape matches; the message lists the columns seen and the shapes accepted.

    Example:
        >>> detect_shape(["instruction", "input", "output"]), detect_shape(["question", "answer", "id"])
        ('alpaca', 'question_answer')
    """
    present = set(columns)
    for name, needed in SHAPES.items():
        if present.issuperset(needed):
            return name
    raise ValueError(
        f"Cannot read a dataset with columns {sorted(present)} as instruction data. Accepted shapes: "
        "alpaca (instruction, optional input, output), question_answer (question, answer), "
        "messages (a list of {role, content} dicts ending with an assistant turn), "
        "prompt_completion (prompt, completion: text, or lists of {role, content} dicts as in TRL), "
        "text (text: continued pretraining, loss on every token). Rename the columns (datasets' rename_column) "
        "or pass shape=."
    )


def to_messages(
    row: Mapping[str, Any], shape: str, *, system_prompt: str | None = None
) -> tuple[list[Message], list[bool]]:
    r"""A row as a whole conversation, and which of its messages carry loss.

    - ``alpaca``: the user message is ``instruction``, followed by ``input`` after a blank line when
      ``input`` is present and not empty; the assistant's answer is ``output``.
    - ``question_answer``: ``question`` and ``answer`` (numbers are turned into text).
    - ``messages``: every assistant message carries loss (as TRL's ``assistant_only_loss``), every
      other message is context; the last message must be the assistant's.
    - ``prompt_completion``: ``prompt`` and ``completion``, each either text (a user message, an
      assistant answer) or a list of ``{role, content}`` messages (TRL's conversational format); loss on
      the completion's assistant messages only, the prompt's messages are context.

    A message that opens the conversation never carries loss (it answers nothing). The last message
    is the final response: what generation answers and scoring grades (`to_conversation`).

    Args:
        row: one example.
        shape: a key of `SHAPES` other than ``text`` (plain text has no messages).
        system_prompt: a system message put first, unless the conversation already has one.

    Raises:
        ValueError: an unknown shape, the ``text`` shape, or a conversation that does not end with an
            assistant turn after another message.

    Example:
        >>> row = {"prompt": [{"role": "user", "content": "2 + 3?"}],
        ...        "completion": [{"role": "assistant", "content": "5"}]}
        >>> to_messages(row, "prompt_completion")
        ([{'role': 'user', 'content': '2 + 3?'}, {'role': 'assistant', 'content': '5'}], [False, True])
    """
    if shape == "messages":
        if not isinstance(row["messages"], list | tuple):
            raise ValueError(
                f"A 'messages' example must hold a list of {{role, content}} dicts, got {row['messages']!r}."
            )
        messages = _messages(row["messages"], "user")
        trained = [m["role"] == "assistant" for m in messages]
    elif shape == "prompt_completion":
        prompt, completion = _messages(row["prompt"], "user"), _messages(row["completion"], "assistant")
        messages = [*prompt, *completion]
        trained = [False] * len(prompt) + [m["role"] == "assistant" for m in completion]
    elif shape == "alpaca":
        extra = row.get("input")
        content = str(row["instruction"]) + (f"\n\n{extra}" if extra else "")
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": str(row["output"])}]
        trained = [False, True]
    elif shape == "question_answer":
        messages = [
            {"role": "user", "content": str(row["question"])},
            {"role": "assistant", "content": str(row["answer"])},
        ]
        trained = [False, True]
    elif shape == "text":
        raise ValueError(
            "The text shape has no prompt and response: it is read as it is, with loss on every token "
            "(prepare_dataset tokenises it; it has no messages)."
        )
    else:
        raise ValueError(f"Unknown shape {shape!r}; shapes are {sorted(SHAPES)}.")
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages, trained = [{"role": "system", "content": system_prompt}, *messages], [False, *trained]
    trained = [flag and i > 0 for i, flag in enumerate(trained)]
    if not trained or not trained[-1]:
        roles = [m["role"] for m in messages]
        raise ValueError(
            f"A {shape!r} example must end with an assistant turn to learn, after at least one other message; "
            f"its roles are {roles}."
        )
    return messages, trained


def _messages(value: Any, role: str) -> list[Message]:
    """A column's value as messages: a list of ``{role, content}`` dicts as it is, text as one ``role`` message."""
    if isinstance(value, list | tuple):
        return [
            {"role": str(m["role"]), "content": "" if m.get("content") is None else str(m["content"])} for m in value
        ]
    return [{"role": role, "content": str(value)}]


def to_conversation(
    row: Mapping[str, Any], shape: str, *, system_prompt: str | None = None
) -> tuple[list[Message], str]:
    r"""A row's last turn as ``(prompt messages, response)``: what generation answers, and its reference answer.

    The prompt is every message of `to_messages` but the last (earlier assistant turns included), the
    response the last one's content. For a multi-turn chat, `prepare_dataset` also trains on the
    earlier assistant turns.

    Args:
        row: one example.
        shape: a key of `SHAPES` other than ``text``.
        system_prompt: a system message put first, unless the conversation already has one.

    Raises:
        ValueError: see `to_messages`.

    Example:
        >>> to_conversation({"instruction": "Add.", "input": "2 + 3", "output": "5"}, "alpaca")
        ([{'role': 'user', 'content': 'Add.\n\n2 + 3'}], '5')
    """
    messages, _ = to_messages(row, shape, system_prompt=system_prompt)
    return messages[:-1], messages[-1]["content"]


def render(prompt: list[Message], response: str, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    r"""Prompt and response as text, with the tokenizer's chat template when it has one.

    With a chat template the prompt ends with the template's generation prompt (the assistant's
    header), and the response is what the template adds after it for the assistant's turn (so it
    includes the end-of-turn token). Without one, `PLAIN_TEMPLATE` renders each message, the prompt
    ends with ``"### Assistant:\n"`` and the response is followed by the EOS token.

    Example:
        >>> from lightning_curricula.recipes.llm.model import tiny_tokenizer
        >>> render([{"role": "user", "content": "1 + 1"}], "2", tiny_tokenizer(chat_template=False))
        ('### User:\n1 + 1\n\n### Assistant:\n', '2</s>')
    """
    if getattr(tokenizer, "chat_template", None):
        prompt_text = str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        full = str(tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False))
        if full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text) :]
        # A template that rewrites earlier turns when an answer follows (some strip reasoning): fall back.
        log.warning("The chat template does not extend the prompt with the answer; the response is answer + EOS.")
        return prompt_text, response + str(tokenizer.eos_token or "")
    text = "".join(PLAIN_TEMPLATE.format(role=m["role"].capitalize(), content=m["content"]) for m in prompt)
    return text + _PLAIN_GENERATION_PROMPT, response + str(tokenizer.eos_token or "")


class _NotTurnByTurn(ValueError):
    """The chat template does not render the conversation turn by turn (an earlier turn changes later)."""


def render_turns(
    messages: list[Message], trained: list[bool], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[str, bool]]:
    r"""A conversation as text pieces, each marked with whether it carries loss; together they are the whole text.

    With a chat template the conversation is rendered turn by turn: for each message that carries
    loss, the template's text of the messages before it with the generation prompt (the assistant's
    header) and of the messages up to it. What the header adds is context, what the message adds
    after its header (its content and the end of its turn) carries loss. This needs nothing but
    ``apply_chat_template``, so it works for any template that renders a conversation as the
    concatenation of its turns. Without a template, `PLAIN_TEMPLATE` renders each message, and a
    trained message is its content followed by the EOS token. Adjacent pieces with the same mark are
    joined; the last piece is the final response.

    Raises:
        ValueError: the chat template renders an earlier turn differently once later turns follow
            (some strip earlier reasoning), or refuses a part of the conversation; `prepare_dataset`
            then trains on the final turn only (`render`), and counts it.

    Example:
        >>> from lightning_curricula.recipes.llm.model import tiny_tokenizer
        >>> chat = [{"role": "user", "content": "1 + 1"}, {"role": "assistant", "content": "2"},
        ...         {"role": "user", "content": "2 + 2"}, {"role": "assistant", "content": "4"}]
        >>> for piece in render_turns(chat, [False, True, False, True], tiny_tokenizer(chat_template=False)):
        ...     print(piece)
        ('### User:\n1 + 1\n\n### Assistant:\n', False)
        ('2</s>', True)
        ('\n\n### User:\n2 + 2\n\n### Assistant:\n', False)
        ('4</s>', True)
    """
    if len(messages) != len(trained) or not trained or not trained[-1]:
        raise ValueError(
            f"render_turns needs one flag per message, the last one True; got {len(messages)} messages, {trained}."
        )
    pieces: list[tuple[str, bool]] = []
    if not getattr(tokenizer, "chat_template", None):
        eos = str(tokenizer.eos_token or "")
        for i, (message, flag) in enumerate(zip(messages, trained, strict=True)):
            role = message["role"].capitalize()
            if not flag:
                pieces.append((PLAIN_TEMPLATE.format(role=role, content=message["content"]), False))
                continue
            pieces += [(f"### {role}:\n", False), (message["content"] + eos, True)]
            if i < len(messages) - 1:
                pieces.append(("\n\n", False))
        return _joined(pieces)

    def template(part: list[Message], generation: bool) -> str:
        try:
            return str(tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation))
        except Exception as error:  # a template that refuses a partial conversation (roles must alternate, ...)
            raise _NotTurnByTurn(f"the chat template refuses the first {len(part)} messages: {error}") from error

    done = ""
    for i in (i for i, flag in enumerate(trained) if flag):
        header, text = template(messages[:i], True), template(messages[: i + 1], False)
        if not (header.startswith(done) and text.startswith(header)):
            raise _NotTurnByTurn(f"the chat template renders the turns before message {i} differently once it follows")
        pieces += [(header[len(done) :], False), (text[len(header) :], True)]
        done = text
    return _joined(pieces)


def _joined(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    joined: list[tuple[str, bool]] = []
    for text, flag in pieces:
        if not text:
            continue
        if joined and joined[-1][1] == flag:
            joined[-1] = (joined[-1][0] + text, flag)
        else:
            joined.append((text, flag))
    return joined


# ------------------------------------------------------------------------------------------------ tokens


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token the EOS token as pad (logged); padding never carries loss.

    Raises:
        ValueError: the tokenizer has neither a pad nor an EOS token.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
        log.info(
            "The tokenizer has no pad token: using its EOS token %r as pad (padding is masked).", tokenizer.eos_token
        )
    return tokenizer


def truncate(
    prompt: list[int], response: list[int], max_length: int, *, side: Truncation = "prompt", min_prompt_tokens: int = 1
) -> tuple[list[int], list[int]]:
    """Fit ``prompt + response`` into ``max_length`` tokens.

    ``side="prompt"`` (the default) keeps the response: the prompt is cut from the left (its start
    goes first; its end, with the assistant's header, stays) down to ``min_prompt_tokens``; a
    response still too long is then cut from the right. ``side="right"`` is the classic cut from the
    right: the prompt is kept whole and the response loses its tail, or all of it when the prompt
    alone fills ``max_length``. An empty response means the example has nothing left to learn.

    Example:
        >>> truncate([1, 2, 3, 4], [8, 9], 4)
        ([3, 4], [8, 9])
        >>> truncate([1, 2, 3, 4], [8, 9], 4, side="right")
        ([1, 2, 3, 4], [])
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    if side == "right":
        prompt = prompt[:max_length]
        return prompt, response[: max_length - len(prompt)]
    keep = min(len(prompt), max(max_length - len(response), min_prompt_tokens))
    prompt = prompt[len(prompt) - keep :]
    return prompt, response[: max_length - len(prompt)]


_PREPARED_COLUMNS = (
    "input_ids",
    "labels",
    "prompt_length",
    "response_length",
    "length",
    "source_index",
    "prompt",
    "reference",
)


@dataclass
class PreparedData:
    """Counts of what `prepare_dataset` did to fit ``max_length``; `summary` is what it logs.

    ``final_turn_only`` counts the conversations whose chat template does not render turn by turn
    (`render_turns`): they learn their final assistant turn only.
    """

    total: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped: list[int] = field(default_factory=list)
    final_turn_only: int = 0

    def summary(self, max_length: int) -> str:
        """One line: how many examples were cut or dropped, and which ids were dropped."""
        shown = self.dropped[:10]
        more = f" and {len(self.dropped) - len(shown)} more" if len(self.dropped) > len(shown) else ""
        return (
            f"max_length={max_length}: of {self.total} examples, {self.prompt_truncated} had their prompt cut from "
            f"the left, {self.response_truncated} their response cut from the right, and {len(self.dropped)} were "
            f"dropped because no response token was left (source ids {shown}{more})."
        )


def prepare_dataset(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 256,
    shape: str | None = None,
    system_prompt: str | None = None,
    truncation: Truncation = "prompt",
    min_prompt_tokens: int = 1,
    keep_columns: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, PreparedData]:
    """Tokenise instruction data (or plain text) for training: ``input_ids`` and ``labels`` with the context masked.

    One batched ``Dataset.map`` (in memory, never from a cache file, so the counts are this call's).

    **What carries loss.** A conversation (`to_messages`) is rendered turn by turn (`render_turns`)
    and each piece tokenised on its own: ``labels`` are the token ids on every assistant answer that
    `to_messages` marks (for a multi-turn chat, every assistant turn; for prompt/completion, the
    completion), and ``IGNORE_INDEX`` on the rest. A ``text`` row is tokenised as it is (the
    tokenizer's special tokens, then EOS) and every token carries loss.

    Each kept row has ``input_ids``, ``labels``, ``prompt_length`` (the tokens before the final
    response: the generation prompt; 0 for text), ``response_length`` (the final response's tokens;
    all of them for text) and ``length`` (their sum; token counts after truncation: signals a
    `ScoreCurriculum` can sort by), ``source_index`` (its row in ``dataset``, so exports map back),
    ``prompt`` (the last message before the final response, or the text's first characters: shown by
    the tracker's hardest-examples view), ``reference`` (the final response's text, for scoring; empty
    for text), and the columns in ``keep_columns`` (by default every column whose name starts with
    ``difficulty``, and ``metadata``).

    **Over-long examples** (more than ``max_length`` tokens) follow `truncate` with ``truncation``:
    by default the tokens before the final response are cut from the left so that the response is
    kept (text is cut from the right). An example left with no response token, or with no token that
    carries loss after the first (whose label nothing predicts), would have a loss of 0 / 0: it is
    dropped. The counts are logged (a warning when anything was cut or dropped) and returned.

    Args:
        dataset: rows in one of the `SHAPES`.
        tokenizer: a Hugging Face tokenizer; one without a pad token gets EOS as pad (`ensure_pad_token`).
        max_length: the most tokens per example, prompt and response together.
        shape: a key of `SHAPES`; detected from the columns when ``None``.
        system_prompt: see `to_conversation`.
        truncation: ``"prompt"`` or ``"right"``, see `truncate`.
        min_prompt_tokens: the fewest prompt tokens ``"prompt"`` truncation keeps.
        keep_columns: columns copied to the output; see above for the default.

    Returns:
        ``(tokenised dataset, counts)``.

    Raises:
        ValueError: the columns match no shape, ``max_length`` is too small, or every example was dropped.
    """
    if max_length <= min_prompt_tokens or min_prompt_tokens < 0:
        raise ValueError(
            f"max_length ({max_length}) must exceed min_prompt_tokens ({min_prompt_tokens}) >= 0 "
            "to leave room for a response."
        )
    if truncation not in ("prompt", "right"):
        raise ValueError(f"truncation must be 'prompt' or 'right', got {truncation!r}.")
    shape = detect_shape(dataset.column_names) if shape is None else shape
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; shapes are {sorted(SHAPES)}.")
    missing = [c for c in SHAPES[shape] if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"shape={shape!r} needs columns {list(SHAPES[shape])}; the dataset has {dataset.column_names}."
        )
    ensure_pad_token(tokenizer)
    if keep_columns is None:
        keep_columns = [c for c in dataset.column_names if c.startswith("difficulty") or c == "metadata"]
    counts = PreparedData(total=len(dataset))

    def encode(batch: dict[str, list[Any]], ids: list[int]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        if shape == "text":
            encoded = _encode_texts([str(row["text"]) for row in rows], tokenizer)
            shown = [(str(row["text"])[:_TEXT_PREVIEW], "") for row in rows]
        else:
            encoded, shown = _encode_conversations(rows, shape, system_prompt, tokenizer, counts)
        columns: dict[str, list[Any]] = {name: [] for name in (*_PREPARED_COLUMNS, *keep_columns)}
        for i, (tokens, labels, prompt_length) in enumerate(encoded):
            # The rule of `truncate`, applied to positions so that the labels follow their tokens.
            cut_prompt, cut_response = truncate(
                list(range(prompt_length)),
                list(range(prompt_length, len(tokens))),
                max_length,
                side=truncation,
                min_prompt_tokens=min_prompt_tokens,
            )
            kept = cut_prompt + cut_response
            counts.prompt_truncated += len(cut_prompt) < prompt_length
            counts.response_truncated += 0 < len(cut_response) < len(tokens) - prompt_length
            kept_labels = [labels[k] for k in kept]
            if not cut_response or all(label == IGNORE_INDEX for label in kept_labels[1:]):
                counts.dropped.append(ids[i])
                continue
            columns["input_ids"].append([tokens[k] for k in kept])
            columns["labels"].append(kept_labels)
            columns["prompt_length"].append(len(cut_prompt))
            columns["response_length"].append(len(cut_response))
            columns["length"].append(len(kept))
            columns["source_index"].append(ids[i])
            columns["prompt"].append(shown[i][0])
            columns["reference"].append(shown[i][1])
            for c in keep_columns:
                columns[c].append(batch[c][i])
        return columns

    # Counted in this process, so never from a cache file; the fingerprint is given, not hashed from the tokenizer.
    settings = (len(dataset), dataset.column_names, shape, system_prompt, max_length, truncation, min_prompt_tokens)
    fingerprint = hashlib.sha256(repr((settings, getattr(tokenizer, "name_or_path", ""))).encode()).hexdigest()[:16]
    prepared = dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        load_from_cache_file=False,
        keep_in_memory=True,
        new_fingerprint=f"prepare_dataset-{fingerprint}",
        desc="Tokenising",
    )
    changed = counts.prompt_truncated or counts.response_truncated or counts.dropped
    (log.warning if changed else log.info)(counts.summary(max_length))
    if counts.final_turn_only:
        log.warning(
            "The chat template does not render %d of %d conversations turn by turn (an earlier turn changes once a "
            "later one follows): they learn their final assistant turn only.",
            counts.final_turn_only,
            counts.total,
        )
    if not len(prepared):
        raise ValueError(f"No example is left to train on. {counts.summary(max_length)}")
    return prepared, counts


Encoded = tuple[list[int], list[int], int]  # token ids, labels, tokens before the final response


def _encode_texts(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[Encoded]:
    """Plain text: the tokenizer's special tokens (a BOS, say), the text, EOS; every token carries loss."""
    eos = tokenizer.eos_token_id
    encoded = []
    for tokens in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        tokens = [*tokens, eos] if eos is not None and (not tokens or tokens[-1] != eos) else list(tokens)
        encoded.append((tokens, list(tokens), 0))
    return encoded


def _encode_conversations(
    rows: list[dict[str, Any]],
    shape: str,
    system_prompt: str | None,
    tokenizer: PreTrainedTokenizerBase,
    counts: PreparedData,
) -> tuple[list[Encoded], list[tuple[str, str]]]:
    """Conversations as tokens with their labels (`render_turns`), and each one's ``(prompt, reference)`` columns."""
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (a BOS, say).
    add_special = not getattr(tokenizer, "chat_template", None)
    rendered, shown = [], []
    for row in rows:
        messages, trained = to_messages(row, shape, system_prompt=system_prompt)
        try:
            pieces = render_turns(messages, trained, tokenizer)
        except _NotTurnByTurn:
            counts.final_turn_only += 1
            prompt_text, response_text = render(messages[:-1], messages[-1]["content"], tokenizer)
            pieces = [(prompt_text, False), (response_text, True)]
        rendered.append(pieces)
        shown.append((messages[-2]["content"], messages[-1]["content"]))
    firsts = tokenizer([pieces[0][0] for pieces in rendered], add_special_tokens=add_special)["input_ids"]
    rest = [text for pieces in rendered for text, _ in pieces[1:]]
    later = iter(tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
    encoded = []
    for pieces, first in zip(rendered, firsts, strict=True):
        tokens: list[int] = []
        labels: list[int] = []
        for index, (_, flag) in enumerate(pieces):
            part = list(first) if index == 0 else list(next(later))
            tokens += part
            labels += part if flag else [IGNORE_INDEX] * len(part)
        final = len(part) if pieces[-1][1] else 0  # the final response: the last piece, trained
        encoded.append((tokens, labels, len(tokens) - final))
    return encoded, shown


class CausalLMCollator:
    """Pad a list of `prepare_dataset` rows into a batch of tensors, with ``transformers``' padding collator.

    ``input_ids``, ``attention_mask`` and ``labels`` are right-padded by ``DataCollatorForSeq2Seq``
    (labels with ``IGNORE_INDEX``), whatever the tokenizer's own padding side. The batch also has
    ``prompt_length``, and ``index`` and ``weight`` when the rows carry them (`WithIndex` and
    `CurriculumSampler` add them); with ``generation=True``, the left-padded prompts
    (``prompt_input_ids``, ``prompt_attention_mask``) with the ``reference`` texts and ``metadata``
    for scoring.

    Args:
        tokenizer: the tokenizer (its pad token pads; one without gets EOS, see `ensure_pad_token`).
        generation: also build the left-padded prompts for greedy generation.

    Example:
        >>> from lightning_curricula.recipes.llm.model import tiny_tokenizer
        >>> collate = CausalLMCollator(tiny_tokenizer())
        >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1, "index": 3},
        ...                  {"input_ids": [5, 8], "labels": [-100, 8], "prompt_length": 1, "index": 4}])
        >>> batch["labels"].tolist(), batch["attention_mask"].tolist(), batch["index"].tolist()
        ([[-100, 6, 7], [-100, 8, -100]], [[1, 1, 1], [1, 1, 0]], [3, 4])
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, generation: bool = False) -> None:
        from transformers import DataCollatorForSeq2Seq

        # A shallow copy: right padding for training whatever the caller's tokenizer does, left for prompts.
        self.tokenizer = ensure_pad_token(copy.copy(tokenizer))
        self.tokenizer.padding_side = "right"
        self.generation = generation
        self.pad = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The batch of ``rows``."""
        features = [
            {"input_ids": row["input_ids"], "attention_mask": [1] * len(row["input_ids"]), "labels": row["labels"]}
            for row in rows
        ]
        batch: dict[str, Any] = dict(self.pad(features))
        batch["prompt_length"] = torch.tensor([row["prompt_length"] for row in rows])
        if "index" in rows[0]:
            batch["index"] = torch.tensor([row["index"] for row in rows], dtype=torch.long)
        if "weight" in rows[0]:
            batch["weight"] = torch.tensor([row["weight"] for row in rows], dtype=torch.float32)
        if self.generation:
            prompts = [{"input_ids": row["input_ids"][: row["prompt_length"]]} for row in rows]
            padded = self.tokenizer.pad(prompts, padding_side="left", return_attention_mask=True, return_tensors="pt")
            batch["prompt_input_ids"] = padded["input_ids"]
            batch["prompt_attention_mask"] = padded["attention_mask"]
            batch["reference"] = [row.get("reference", "") for row in rows]
            batch["metadata"] = [row.get("metadata") for row in rows]
        return batch


def response_only(batch: Mapping[str, Tensor], start_token_id: int, pad_token_id: int) -> dict[str, Tensor]:
    """The batch's responses alone, after one ``start_token_id``: the unconditioned input of IFD.

    Every token that carries loss keeps its label (the start token has none), so the unconditioned
    loss is over exactly the tokens of the conditioned one (for a multi-turn chat, every assistant
    turn's). Right-padded like the training batch.

    Raises:
        ValueError: a row has no prompt (``prompt_length`` 0: the ``text`` shape), so IFD means nothing.

    Example:
        >>> from lightning_curricula.recipes.llm.model import tiny_tokenizer
        >>> collate = CausalLMCollator(tiny_tokenizer())
        >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_length": 1}])
        >>> response_only(batch, 1, 0)["input_ids"].tolist()
        [[1, 6, 7]]
    """
    if "prompt_length" in batch and bool((batch["prompt_length"] == 0).any()):
        raise ValueError(
            "IFD needs a prompt: it compares each response's loss with and without its prompt, and rows of the text "
            "shape (continued pretraining, loss on every token) have none. Their per-example difficulty is the "
            "learned loss (TrainingDynamics' loss, loss_mean, loss_ema): leave fit_start_scores off and rank by "
            "a tracked signal."
        )
    mask = batch["labels"] != IGNORE_INDEX
    lengths = mask.sum(1)
    width = int(lengths.max()) + 1
    size = len(lengths)
    input_ids = torch.full((size, width), pad_token_id, dtype=torch.long)
    labels = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((size, width), dtype=torch.long)
    for i in range(size):
        tokens = batch["input_ids"][i][mask[i]]
        input_ids[i, 0] = start_token_id
        input_ids[i, 1 : 1 + tokens.numel()] = tokens
        labels[i, 1 : 1 + tokens.numel()] = tokens
        attention[i, : 1 + tokens.numel()] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# ------------------------------------------------------------------------------------------------ sources


def load_instruction_dataset(source: str, *, split: str = "train", **kwargs: Any) -> datasets.Dataset:
    """Rows from a local file or folder, or a Hugging Face hub dataset name.

    - ``*.json`` / ``*.jsonl``, ``*.parquet``, ``*.csv``: ``datasets.load_dataset`` with that builder;
    - a folder written by ``Dataset.save_to_disk``: ``datasets.load_from_disk``;
    - anything else: ``datasets.load_dataset(source, split=split, **kwargs)`` (needs the hub, or its cache).

    For reasoning-gym tasks use `load_reasoning_gym`.
    """
    import datasets

    path = Path(source).expanduser()
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    if path.is_file() and path.suffix in builders:
        return datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
    if path.is_dir() and (path / "dataset_info.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.exists():
        raise ValueError(f"{source} exists but is not a .json, .jsonl, .parquet or .csv file or a save_to_disk folder.")
    try:
        return datasets.load_dataset(source, split=split, **kwargs)
    except Exception as error:
        raise RuntimeError(
            f"Could not load dataset {source!r} (split {split!r}) with datasets.load_dataset: {error}. Offline, use a "
            "local file or the generated data: dataset='reasoning_gym:basic_arithmetic'."
        ) from error


def load_reasoning_gym(
    task: str = "basic_arithmetic",
    size: int = 1000,
    seed: int = 0,
    *,
    levels: Sequence[Mapping[str, Any]] | None = None,
    **config: Any,
) -> datasets.Dataset:
    """Generate a reasoning-gym task as question/answer rows with a known ``difficulty`` in ``[0, 1]``.

    reasoning-gym writes in each example's ``metadata["difficulty"]`` the *ranges* the generator
    drew from (for ``basic_arithmetic``: ``{"num_terms": (2, 5), "num_digits": (1, 2)}``) and, under the
    same names, the values this example got (``metadata["num_terms"] == 3``). The per-dimension
    difficulty is the value's position in its range, ``(value - low) / (high - low)``, kept as the
    column ``difficulty_<name>``; ``difficulty`` is their mean. A wide range in the task's config
    (`REASONING_GYM_DEFAULTS` gives one for the arithmetic tasks) is what spreads the difficulties.

    For a task whose metadata has no per-example values, give ``levels``: a list of config overrides
    from easiest to hardest; ``size`` is split evenly between them and ``difficulty`` is the level's
    position, ``level / (len(levels) - 1)`` (also kept as ``difficulty_level``).

    Args:
        task: a reasoning-gym task name.
        size: number of examples.
        seed: the generator's seed (use another seed for held-out data).
        levels: config overrides, easiest first, to label difficulty by level.
        **config: the task's config (for ``basic_arithmetic``: ``min_terms``, ``max_terms``,
            ``min_digits``, ``max_digits``, ...), over `REASONING_GYM_DEFAULTS`.

    Returns:
        A ``datasets.Dataset`` with ``question``, ``answer``, ``difficulty``, ``difficulty_*`` and
        ``metadata`` (the example's metadata as JSON, which the scorer reads).

    Raises:
        ValueError: the task reports no per-example difficulty and no ``levels`` were given.

    Example:
        >>> rows = load_reasoning_gym("basic_arithmetic", size=4, seed=0)
        >>> rows.column_names
        ['question', 'answer', 'difficulty', 'difficulty_num_digits', 'difficulty_num_terms', 'metadata']
    """
    import datasets
    import reasoning_gym

    settings = {**REASONING_GYM_DEFAULTS.get(task, {}), **config}
    if size < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    if levels is not None and len(levels) < 2:
        raise ValueError(f"levels needs at least two configs (easiest first), got {len(levels)}.")
    rows: list[dict[str, Any]] = []
    if levels is None:
        for entry in reasoning_gym.create_dataset(task, size=size, seed=seed, **settings):
            rows.append({**_qa(entry), **_metadata_difficulty(task, entry["metadata"])})
    else:
        for level, overrides in enumerate(levels):
            count = size * (level + 1) // len(levels) - size * level // len(levels)
            generated = reasoning_gym.create_dataset(
                task, size=count, seed=seed + 7919 * level, **{**settings, **overrides}
            )
            for entry in generated:
                share = level / (len(levels) - 1)
                rows.append({**_qa(entry), "difficulty": share, "difficulty_level": float(level)})
    names = sorted({key for row in rows for key in row} - {"question", "answer", "difficulty", "metadata"})
    columns = {"question": [], "answer": [], "difficulty": [], **{n: [] for n in names}, "metadata": []}
    for row in rows:
        for key in columns:
            columns[key].append(row.get(key, math.nan))
    return datasets.Dataset.from_dict(columns)


def _qa(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "question": str(entry["question"]),
        "answer": str(entry["answer"]),
        "metadata": json.dumps(entry["metadata"]),
    }


def _metadata_difficulty(task: str, metadata: Mapping[str, Any]) -> dict[str, float]:
    ranges = metadata.get("difficulty", {})
    dims: dict[str, float] = {}
    for name, bounds in ranges.items():
        value = metadata.get(name)
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and isinstance(value, (int, float)):
            low, high = float(bounds[0]), float(bounds[1])
            dims[f"difficulty_{name}"] = (float(value) - low) / (high - low) if high > low else 0.0
    if not dims:
        raise ValueError(
            f"reasoning-gym task {task!r} reports no per-example difficulty in its metadata (its difficulty "
            f"entry is {ranges!r}); pass levels=[{{...easiest config...}}, ..., {{...hardest...}}] "
            "to label it by level."
        )
    return {"difficulty": sum(dims.values()) / len(dims), **dims}


def split_by_difficulty(
    dataset: datasets.Dataset, fraction: float, *, column: str = "difficulty"
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The easiest and the hardest ``fraction`` of ``dataset`` by ``column`` (ties broken by row order).

    Example:
        >>> import datasets
        >>> easy, hard = split_by_difficulty(datasets.Dataset.from_dict({"difficulty": [0.9, 0.1, 0.5, 0.3]}), 0.5)
        >>> list(easy["difficulty"]), list(hard["difficulty"])
        ([0.1, 0.3], [0.9, 0.5])
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5] so the easy and hard splits do not overlap, got {fraction!r}.")
    if column not in dataset.column_names:
        raise ValueError(f"No column {column!r} to split by difficulty; the dataset has {dataset.column_names}.")
    count = max(1, int(fraction * len(dataset)))
    order = torch.sort(torch.tensor(list(dataset[column]), dtype=torch.float64), stable=True).indices.tolist()
    return dataset.select(order[:count]), dataset.select(order[::-1][:count])


# ------------------------------------------------------------------------------------------------ scoring


def normalized_match(prediction: str, reference: str) -> float:
    """1.0 when the answers agree after normalisation, else 0.0.

    Normalisation: lower case, surrounding whitespace and a trailing period removed, inner whitespace
    collapsed, thousands separators dropped; two numbers agree when their values are equal.

    Example:
        >>> normalized_match(" 1,200. ", "1200"), normalized_match("-3.0", "-3"), normalized_match("Paris", "paris")
        (1.0, 1.0, 1.0)
    """

    def clean(text: str) -> str:
        text = re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()
        return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)

    a, b = clean(prediction), clean(reference)
    if a == b:
        return 1.0
    try:
        return 1.0 if math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9) else 0.0
    except ValueError:
        return 0.0


def make_scorer(task: str | None = None) -> Scorer:
    """A `Scorer`: reasoning-gym's ``score_answer`` for ``task``, else `normalized_match` with the reference.

    reasoning-gym's checker reads the row's ``reference`` answer and its ``metadata`` (JSON); when it
    cannot score a row (it raises), the normalised match is used for that row.

    Example:
        >>> make_scorer()("42", {"reference": "42"})
        1.0
    """
    if task is None:
        return lambda prediction, row: normalized_match(prediction, str(row["reference"]))
    import reasoning_gym

    score_answer = reasoning_gym.get_score_answer_fn(task)

    def score(prediction: str, row: Mapping[str, Any]) -> float:
        metadata = row.get("metadata")
        entry = {"answer": str(row["reference"]), "metadata": json.loads(metadata) if isinstance(metadata, str) else {}}
        try:
            return float(score_answer(prediction.strip(), entry))
        except Exception:  # a checker that cannot read this row: fall back to the plain comparison
            return normalized_match(prediction, str(row["reference"]))

    return score
