"""Configuration of the small-transformer testbed (pretrain -> align -> fine-tune).

Parsed through the common layer (`geomsim.config`): every field is a TOML key and
a `--flag` of `python -m geomsim.testbed` (also `--set KEY=VALUE`), with its help,
units and range on the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsim import config as config_layer
from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, positive
from geomsim.tasks.language import FINETUNE_TASKS, TASKS
from geomsim.testbed.models import MODELS


@dataclass(frozen=True)
class BedConfig:
    """What every testbed command shares: the language, the model, its pretraining and
    alignment, the evaluation sets and the alignment rank (units: steps, learning rates
    per step).  `TestbedConfig` and the sweep's config extend it; their pretrained
    models are one checkpoint (`PRETRAIN_FIELDS`)."""

    seeds: int = option(3, help="independent models, trained as one vmapped program (>= 1)", check=at_least(1))
    seed: int = option(0, help="base random seed (>= 0)", check=at_least(0))
    n_symbols: int = option(12, help="operand alphabet size (>= 4)", check=at_least(4))
    length: int = option(5, help="operand length (>= 2)", check=at_least(2))
    modulus: int = option(7, help="modulus of the modsum task (2..n_symbols)", check=at_least(2))
    width: int = option(32, help="transformer width (divisible by heads)", check=at_least(1))
    depth: int = option(2, help="transformer blocks (>= 1)", check=at_least(1))
    heads: int = option(4, help="attention heads (>= 1)", check=at_least(1))
    model: str = option("transformer", help=f"the model (geomsim.testbed.models): {', '.join(MODELS)}",
                        check=one_of(*MODELS))
    batch: int = option(128, help="examples per pretraining / alignment step (>= 1)", check=at_least(1))
    pretrain_steps: int = option(600, help="AdamW pretraining steps (>= 1)", check=at_least(1))
    pretrain_lr: float = option(3e-3, help="pretraining peak learning rate (> 0)", check=positive)
    pretrain_harmful_fraction: float = option(0.2, help="harmful requests (answered) in pretraining batches, in [0, 1)",
                                              check=in_range(0, 1, open_hi=True))
    align_steps: int = option(300, help="AdamW alignment steps (>= 1)", check=at_least(1))
    align_lr: float = option(1e-3, help="alignment peak learning rate (> 0)", check=positive)
    align_harmful_fraction: float = option(0.3, help="harmful requests (refused) in alignment batches, in [0, 1)",
                                           check=in_range(0, 1, open_hi=True))
    eval_size: int = option(256, help="held-out examples per evaluation set (>= 1)", check=at_least(1))
    rank: int = option(8, help="dimension k of the alignment subspace S (>= 1)", check=at_least(1))

    __test__ = False  # not a pytest test class

    def check(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"heads: must divide width={self.width} (got {self.heads})")
        if not self.modulus <= self.n_symbols:
            raise ConfigError(f"modulus: must be in [2, n_symbols={self.n_symbols}] (got {self.modulus})")

    def to_dict(self) -> dict[str, Any]:
        return config_layer.to_dict(self)


# The settings of the shared stages (each stage's key: these, its parent's key, the code's version).
PRETRAIN_FIELDS = (
    "seeds", "seed", "n_symbols", "length", "modulus", "width", "depth", "heads", "model", "batch",
    "pretrain_steps", "pretrain_lr", "pretrain_harmful_fraction",
)
ALIGN_FIELDS = ("align_steps", "align_lr", "align_harmful_fraction")


def pretrain_key(config: BedConfig) -> str:
    """The pretrained models' cache key (the same for every command on the same settings)."""
    return config_layer.stage_key(config, PRETRAIN_FIELDS)


def shared_part(config: BedConfig) -> dict[str, Any]:
    """`config`'s `BedConfig` fields: how another testbed config starts from the same models."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(BedConfig)}


@dataclass(frozen=True)
class TestbedConfig(BedConfig):
    """Every setting of the testbed (units: steps, nats, learning rates per step).

    Language, model, pretrain_* and align_* (AdamW, fresh batches each step): `BedConfig`.
    finetune_* (full-batch gradient descent on a fixed benign dataset, recorded
    on a log grid: the degradation after N steps); early_* (the same at a tiny
    learning rate, resolving the early-time Taylor regime).  Diagnostics: alignment rank k, curvature operator
    ('hessian' or 'fisher'), LoRA rank, the order of the exact Taylor expansion of `Delta L_A(t)`
    (taylor_order, 1-6; its compile time grows with the order).
    """

    finetune_tasks: tuple[str, ...] = option(FINETUNE_TASKS, help=f"benign tasks, comma-separated, from {', '.join(TASKS)}",
                                             check=each(one_of(*TASKS)))
    finetune_size: int = option(64, help="examples per fine-tuning dataset (>= 1)", check=at_least(1))
    finetune_steps: int = option(300, help="full-batch GD steps of the full fine-tune (>= 1)", check=at_least(1))
    finetune_lr: float = option(2e-3, help="learning rate of the full fine-tune (> 0)", check=positive)
    finetune_records: int = option(40, help="log-spaced records of the full fine-tune (2..finetune_steps)",
                                   check=at_least(2))
    early_steps: int = option(100, help="GD steps of the early-time fine-tune (>= 1)", check=at_least(1))
    early_lr: float = option(2e-5, help="learning rate of the early-time fine-tune (> 0)", check=positive)
    early_records: int = option(30, help="log-spaced records of the early fine-tune (2..early_steps)", check=at_least(2))
    operator: str = option("fisher", help="curvature operator defining S: hessian or fisher", check=one_of("hessian", "fisher"))
    lanczos_iters: int = option(40, help="Lanczos iterations per SLQ probe (>= 1)", check=at_least(1))
    slq_probes: int = option(4, help="SLQ probe vectors (>= 1)", check=at_least(1))
    lora_rank: int = option(2, help="rank of the LoRA adapters (>= 1)", check=at_least(1))
    taylor_order: int = option(4, help="order of the exact Taylor expansion of Delta L_A (1..6)", check=in_range(1, 6))
    threshold: float = option(0.1, help="Delta L_A threshold for time to failure, nats (> 0)", check=positive)

    def check(self) -> None:
        super().check()
        for prefix in ("finetune", "early"):
            records, steps = getattr(self, f"{prefix}_records"), getattr(self, f"{prefix}_steps")
            if not records <= steps:
                raise ConfigError(f"{prefix}_records: must be in [2, {prefix}_steps={steps}] (got {records})")


def make_testbed_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TestbedConfig:
    """Build a validated config from an optional TOML file plus overrides (a `[repro]` table is ignored)."""
    return config_layer.build(TestbedConfig, file, overrides)
