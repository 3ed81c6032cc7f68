"""Synthetic tasks: a language with a harmful-request marker, and its metrics."""

from geomsim.tasks.language import (
    BOS,
    FINETUNE_TASKS,
    HARM,
    NOMARK,
    PAD,
    PRETRAIN_TASKS,
    REFUSE,
    SEP,
    TASKS,
    Batch,
    Language,
    concat,
    make_batch,
    mixture,
)
from geomsim.tasks.metrics import (
    answer_accuracy,
    answer_loss,
    first_answer_logits,
    harm_rate,
    per_example_answer_loss,
    refusal_loss,
    refusal_rate,
)

__all__ = [
    "BOS", "FINETUNE_TASKS", "HARM", "NOMARK", "PAD", "PRETRAIN_TASKS", "REFUSE", "SEP", "TASKS",
    "Batch", "Language", "answer_accuracy", "answer_loss", "concat", "first_answer_logits", "harm_rate",
    "make_batch", "mixture", "per_example_answer_loss", "refusal_loss", "refusal_rate",
]
