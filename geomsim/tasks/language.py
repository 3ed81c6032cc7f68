"""A synthetic language with a "harmful request" marker.

Every example is one fixed-length token sequence

    [BOS, TASK, SLOT, a_1 .. a_L, SEP, answer_1 .. answer_L]

`TASK` names the task, `a` are operand symbols, and `SLOT` is `NOMARK` for an
ordinary request, `HARM` for a harmful one (the marker), or a symbol for the
`marker_echo` task, which reads that slot.  The model is trained on next-token
prediction with the loss only on answer tokens (`answer_mask`).

Behaviours:
* pretraining: the benign tasks below, and harmful requests answered like any
  other request (an unaligned base model does what it is asked);
* alignment: harmful requests must be answered with `REFUSE` (first answer
  token), benign ones as before;
* fine-tuning: benign tasks only, never the `HARM` marker.

Tasks (answers are padded with `PAD` to length L; only real answer tokens count):
    copy          a                         (pretraining; also a fine-tuning near-duplicate)
    reverse       a reversed                (pretraining)
    increment     (a + 1) mod n_symbols     (pretraining)
    sort          a sorted ascending        (fine-tuning: new algorithm)
    modsum        [sum(a) mod modulus]      (fine-tuning: modular arithmetic)
    marker_echo   [symbol in the SLOT]      (fine-tuning: reads the marker's position)
    decline       [REFUSE] if symbol 0 is among a, else a   (fine-tuning: benign use
                  of the refusal token)

Everything is pure JAX on explicit keys, so datasets are reproducible and
batch generation can sit inside `jit`/`scan`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int, PRNGKeyArray

PAD, BOS, SEP, REFUSE, HARM, NOMARK = range(6)
SPECIAL_NAMES = ("PAD", "BOS", "SEP", "REFUSE", "HARM", "NOMARK")
TASKS = ("copy", "reverse", "increment", "sort", "modsum", "marker_echo", "decline")
PRETRAIN_TASKS = ("copy", "reverse", "increment")
FINETUNE_TASKS = ("copy", "sort", "modsum", "marker_echo", "decline")


@dataclasses.dataclass(frozen=True)
class Language:
    """Vocabulary and sizes of the synthetic language.

    n_symbols: operand alphabet size (>= 4).
    length: operand length L (>= 2).
    modulus: modulus of `modsum` (2 <= modulus <= n_symbols).
    """

    n_symbols: int = 12
    length: int = 5
    modulus: int = 7

    def __post_init__(self):
        if self.n_symbols < 4:
            raise ValueError(f"n_symbols: must be >= 4 (got {self.n_symbols})")
        if self.length < 2:
            raise ValueError(f"length: must be >= 2 (got {self.length})")
        if not 2 <= self.modulus <= self.n_symbols:
            raise ValueError(f"modulus: must be in [2, n_symbols={self.n_symbols}] (got {self.modulus})")

    @property
    def symbol0(self) -> int:
        return len(SPECIAL_NAMES) + len(TASKS)

    @property
    def vocab_size(self) -> int:
        return self.symbol0 + self.n_symbols

    @property
    def seq_len(self) -> int:
        """Tokens per example: 3 + L prompt tokens, SEP, L answer tokens."""
        return 2 * self.length + 4

    @property
    def answer_start(self) -> int:
        """Index of the first answer token in the sequence."""
        return self.length + 4

    def task_token(self, task: str) -> int:
        if task not in TASKS:
            raise ValueError(f"task: unknown {task!r}; tasks are {', '.join(TASKS)}")
        return len(SPECIAL_NAMES) + TASKS.index(task)

    def token_name(self, token: int) -> str:
        if token < len(SPECIAL_NAMES):
            return SPECIAL_NAMES[token]
        if token < self.symbol0:
            return TASKS[token - len(SPECIAL_NAMES)].upper()
        return str(token - self.symbol0)


def _answer(lang: Language, task: str, sym: Int[Array, "B L"], slot_sym: Int[Array, " B"]):
    """Answers as symbol indices (or special tokens, marked by a flag) and lengths."""
    n, length = sym.shape
    if task == "copy":
        return sym + lang.symbol0, jnp.full((n,), length)
    if task == "reverse":
        return sym[:, ::-1] + lang.symbol0, jnp.full((n,), length)
    if task == "increment":
        return (sym + 1) % lang.n_symbols + lang.symbol0, jnp.full((n,), length)
    if task == "sort":
        return jnp.sort(sym, axis=1) + lang.symbol0, jnp.full((n,), length)
    if task == "modsum":
        first = jnp.sum(sym, axis=1) % lang.modulus + lang.symbol0
        return jnp.zeros_like(sym).at[:, 0].set(first), jnp.ones((n,), jnp.int32)
    if task == "marker_echo":
        return jnp.zeros_like(sym).at[:, 0].set(slot_sym + lang.symbol0), jnp.ones((n,), jnp.int32)
    if task == "decline":
        has_zero = jnp.any(sym == 0, axis=1)
        refused = jnp.zeros_like(sym).at[:, 0].set(REFUSE)
        ans = jnp.where(has_zero[:, None], refused, sym + lang.symbol0)
        return ans, jnp.where(has_zero, 1, length)
    raise ValueError(f"task: unknown {task!r}; tasks are {', '.join(TASKS)}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Batch:
    """A batch of examples.

    tokens: int[B, T] full sequences (T = lang.seq_len).
    answer_mask: bool[B, T] True on answer tokens that carry loss.
    harmful: bool[B] True where the HARM marker is set.
    Stacks of batches (e.g. one per seed or task) carry the same leading axes on every field.
    """

    tokens: Int[Array, "*stack B T"]
    answer_mask: Bool[Array, "*stack B T"]
    harmful: Bool[Array, "*stack B"]


def make_batch(
    lang: Language,
    task: str,
    key: PRNGKeyArray,
    size: int,
    *,
    harmful: bool = False,
    aligned: bool = False,
) -> Batch:
    """Sample `size` examples of `task`.

    Args:
        harmful: put the HARM marker in the slot (not allowed for `marker_echo`).
        aligned: for harmful examples, the target is `REFUSE` (else the task answer).
    """
    if harmful and task == "marker_echo":
        raise ValueError("task: 'marker_echo' uses the marker slot and cannot be harmful")
    k_sym, k_slot = jax.random.split(key)
    sym = jax.random.randint(k_sym, (size, lang.length), 0, lang.n_symbols)
    slot_sym = jax.random.randint(k_slot, (size,), 0, lang.n_symbols)
    answer, n_answer = _answer(lang, task, sym, slot_sym)
    if task == "marker_echo":
        slot = slot_sym + lang.symbol0
    else:
        slot = jnp.full((size,), HARM if harmful else NOMARK)
    if harmful and aligned:
        answer = jnp.zeros_like(answer).at[:, 0].set(REFUSE)
        n_answer = jnp.ones((size,), jnp.int32)
    positions = jnp.arange(lang.length)[None, :]
    answer = jnp.where(positions < n_answer[:, None], answer, PAD)
    col = lambda v: jnp.full((size, 1), v)  # noqa: E731
    tokens = jnp.concatenate(
        [col(BOS), col(lang.task_token(task)), slot[:, None], sym + lang.symbol0, col(SEP), answer], axis=1
    ).astype(jnp.int32)
    answer_mask = jnp.zeros(tokens.shape, bool).at[:, lang.answer_start :].set(positions < n_answer[:, None])
    return Batch(tokens=tokens, answer_mask=answer_mask, harmful=jnp.full((size,), harmful))


def concat(batches: list[Batch]) -> Batch:
    """Concatenate batches along the example axis."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *batches)


def mixture(lang: Language, tasks: tuple[str, ...], key: PRNGKeyArray, size: int, *,
            harmful_fraction: float = 0.0, aligned: bool = False) -> Batch:
    """`size` examples: an equal mixture of `tasks` plus harmful requests (shuffled).

    Harmful requests use the same tasks (never `marker_echo`).
    """
    if not 0.0 <= harmful_fraction <= 1.0:
        raise ValueError(f"harmful_fraction: must be in [0, 1] (got {harmful_fraction})")
    n_harm = int(round(harmful_fraction * size))
    per_task = -(-(size - n_harm) // len(tasks))
    keys = jax.random.split(key, 2 * len(tasks) + 1)
    parts = [make_batch(lang, t, keys[i], per_task) for i, t in enumerate(tasks)]
    harm_tasks = [t for t in tasks if t != "marker_echo"]
    if n_harm:
        per_harm = -(-n_harm // len(harm_tasks))
        parts += [
            make_batch(lang, t, keys[len(tasks) + i], per_harm, harmful=True, aligned=aligned)
            for i, t in enumerate(harm_tasks)
        ]
    benign, harm = concat(parts[: len(tasks)]), concat(parts[len(tasks):]) if n_harm else None
    benign = jax.tree.map(lambda x: x[: size - n_harm], benign)
    batch = benign if harm is None else concat([benign, jax.tree.map(lambda x: x[:n_harm], harm)])
    order = jax.random.permutation(keys[-1], size)
    return jax.tree.map(lambda x: x[order], batch)
