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
    answer_log_odds,
    answer_loss,
    answer_loss_of_logits,
    binary_kl,
    calibrated_answer_loss,
    first_answer_logits,
    harm_rate,
    log_odds,
    per_example_answer_loss,
    refusal_kl,
    refusal_log_odds,
    refusal_loss,
    refusal_rate,
)

__all__ = [
    "BOS", "FINETUNE_TASKS", "HARM", "NOMARK", "PAD", "PRETRAIN_TASKS", "REFUSE", "SEP", "TASKS",
    "Batch", "Language", "answer_accuracy", "answer_log_odds", "answer_loss", "answer_loss_of_logits", "binary_kl",
    "calibrated_answer_loss", "concat", "first_answer_logits", "harm_rate", "log_odds", "make_batch", "mixture",
    "per_example_answer_loss", "refusal_kl", "refusal_log_odds", "refusal_loss", "refusal_rate",
]
