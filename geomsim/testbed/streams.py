"""The testbed's PRNG streams, in one registry.

`Stream` values are folded into the base seed's key (`Testbed.key(stream, ...)`);
`RunFold` values into one run's own key.  Each purpose has its own number, so
adding a stage never changes another's data, and a number is never reused: 3
was the fine-tune's, whose full-batch GD needs no key, and stays unassigned.
The values are those every checkpoint and manifest number was made with.
"""

from __future__ import annotations

import enum


@enum.unique
class Stream(enum.IntEnum):
    """Folds of the base seed (`jax.random.fold_in(key(seed), stream)`)."""

    PRETRAIN = 0  # pretraining batches, per seed
    ALIGN = 1  # alignment batches, per seed
    EVAL = 2  # the fixed evaluation and fine-tuning datasets
    LORA = 4  # the adapters' random A factors, per seed
    INIT = 5  # initial weights, per seed
    SPECTRUM = 7  # Lanczos start and SLQ probes of the diagnostics' spectrum, per seed
    DIAGNOSTICS = 8  # the per-task AIC measurement, per seed
    SWEEP_ALIGN_SET = 101  # the sweep's fixed alignment set
    SWEEP_HOLD_SET = 102  # its fixed benign hold set
    SWEEP_TASK_TRAIN = 103  # its fine-tuning sets, per (task, seed)
    SWEEP_TASK_EVAL = 104  # its held-out task sets
    SWEEP_SPECTRUM = 105  # Lanczos starts of the models' spectra
    SWEEP_LAW = 106  # the law runs
    SWEEP_ADAM = 107  # the Adam runs
    SWEEP_FORECAST = 108  # the forecast-validation runs


@enum.unique
class RunFold(enum.IntEnum):
    """Folds of one run's key (`jax.random.fold_in(run_key, fold)`); the run key itself
    seeds the run's own Lanczos start."""

    FORECAST_ADAM = 1  # the forecast run's Adam fine-tune
    FORECAST_ADAM_MOMENTS = 2  # the batches of its Adam forecast's moments
    DEFENSE = 9  # a defended fine-tune and its forecast
