"""Alignment and task sets as a safety team has them: JSONL of prompt/response
records or chat `messages`, tokenised by the model's own tokenizer, with the loss
on response tokens only.

A record is `{"prompt": ..., "response": ...}` or `{"messages": [{"role": ...,
"content": ...}, ...]}` (the loss on every assistant turn; needs the folder's
chat template).  With a chat template, prompt/response records are rendered as
one user turn and one assistant turn; without one, as `prompt` (with the
tokenizer's BOS) followed by `response` and EOS.

Batches are right-padded, and the model is read only at the positions that
predict a response token (`rows`, `cols`), so padding and prompts never reach the
loss and a padded batch gives exactly the unpadded loss: causal attention keeps
every real position blind to the pads after it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from geomsim.models.hf.tokenizer import HFTokenizer


class DataError(ValueError):
    """A JSONL file geomsim cannot use (one line naming the file and line)."""


@dataclasses.dataclass(frozen=True)
class TokenExample:
    """Token ids and, per token, whether it is a response token (a loss target)."""

    ids: tuple[int, ...]
    target: tuple[bool, ...]


def read_jsonl(path) -> list[dict]:
    """The records of a JSONL file (blank lines skipped)."""
    file = Path(path)
    if not file.exists():
        raise DataError(f"{file}: missing")
    records = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{file}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not ({"prompt", "response"} <= record.keys() or "messages" in record):
            raise DataError(f"{file}:{n}: expected {{\"prompt\", \"response\"}} or {{\"messages\"}}")
        records.append(record)
    if not records:
        raise DataError(f"{file}: no records")
    return records


def _spans_from_template(tok: HFTokenizer, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn."""
    text = tok.render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix = tok.render(messages[:i], add_generation_prompt=True)
        through = tok.render(messages[: i + 1])
        # Both renderings must be prefixes of the whole conversation, or the span is not
        # the turn's tokens (Qwen3's template, e.g., renders an earlier assistant turn
        # differently once a later user turn follows: its reasoning block is dropped).
        if not (text.startswith(prefix) and text.startswith(through) and len(prefix) <= len(through)):
            raise DataError(f"{where}: the chat template renders turn {i} differently inside the whole "
                            "conversation, so its tokens cannot be located; give one assistant turn per record")
        start, end = len(prefix), len(through)
        spans.append((start, end))
    if not spans:
        raise DataError(f"{where}: no assistant turn to put the loss on")
    return text, spans


def tokenize(tok: HFTokenizer, record: dict, where: str = "record", max_length: int = 0) -> TokenExample:
    """One record as token ids with response-token targets (`max_length` > 0 truncates)."""
    if "messages" in record or tok.chat_template is not None:
        messages = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                              {"role": "assistant", "content": record["response"]}]
        if tok.chat_template is None:
            raise DataError(f"{where}: chat messages need the tokenizer's chat template, and this one has none")
        text, spans = _spans_from_template(tok, messages, where)
        ids, offsets = tok.encode_offsets(text)
        target = [any(a <= s < b for a, b in spans) and e > s for s, e in offsets]
    else:
        prompt = tok.encode(record["prompt"], special=True)
        response = tok.encode(record["response"]) + ([tok.eos_id] if tok.eos_id is not None else [])
        ids, target = prompt + response, [False] * len(prompt) + [True] * len(response)
    if max_length:
        ids, target = ids[:max_length], target[:max_length]
    if not any(target[1:]):  # position 0 has no context to predict it from
        raise DataError(f"{where}: no response token left to score" + (f" within max_length={max_length}"
                                                                       if max_length else ""))
    return TokenExample(tuple(int(i) for i in ids), tuple(bool(t) for t in target))


def read_examples(tok: HFTokenizer, path, max_length: int = 0) -> list[TokenExample]:
    return [tokenize(tok, r, f"{path}:{n + 1}", max_length) for n, r in enumerate(read_jsonl(path))]


def token_batches(examples: list[TokenExample], batch_size: int, pad_id: int, length: int | None = None
                  ) -> tuple[list, list[int]]:
    """`((input_ids, rows, cols), targets)` batches and their number of loss tokens.

    input_ids: `int[B, T]`, right-padded with `pad_id` to `length` (default: the
    longest example); `(rows, cols)`: the positions whose logits predict a response
    token, `targets` the tokens they predict.  Weighting batches by their loss
    tokens makes the mean over batches the mean over every response token.
    """
    length = length or max(len(e.ids) for e in examples)
    size = batch_size or len(examples)
    batches, counts = [], []
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        ids = np.full((len(chunk), length), pad_id, dtype=np.int32)
        rows, cols, targets = [], [], []
        for b, example in enumerate(chunk):
            ids[b, : len(example.ids)] = example.ids
            for t in range(1, len(example.ids)):
                if example.target[t]:
                    rows.append(b)
                    cols.append(t - 1)
                    targets.append(example.ids[t])
        batches.append(((jnp.asarray(ids), jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32)),
                        jnp.asarray(targets, jnp.int32)))
        counts.append(len(targets))
    return batches, counts
