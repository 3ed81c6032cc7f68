"""Configuration of the small-transformer testbed (pretrain -> align -> fine-tune)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsim.tasks.language import FINETUNE_TASKS, TASKS


class TestbedConfigError(ValueError):
    """A bad testbed setting; one line naming the field and the allowed range."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class TestbedConfig:
    """Every setting of the testbed (units: steps, nats, learning rates per step).

    Language: n_symbols, length, modulus.  Model: width, depth, heads.
    Stages: pretrain_* and align_* (AdamW, fresh batches each step);
    finetune_* (full-batch gradient descent on a fixed benign dataset, recorded
    on a log grid: the degradation after N steps); early_* (the same at a tiny
    learning rate, resolving the early-time Taylor regime).  Diagnostics: alignment rank k, curvature operator
    ('hessian' or 'fisher'), LoRA rank, the order of the exact Taylor expansion of `Delta L_A(t)`
    (taylor_order, 1-6; its compile time grows with the order).
    """

    seeds: int = 3
    seed: int = 0
    n_symbols: int = 12
    length: int = 5
    modulus: int = 7
    width: int = 32
    depth: int = 2
    heads: int = 4
    batch: int = 128
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    pretrain_harmful_fraction: float = 0.2
    align_steps: int = 300
    align_lr: float = 1e-3
    align_harmful_fraction: float = 0.3
    finetune_tasks: tuple[str, ...] = FINETUNE_TASKS
    finetune_size: int = 64
    finetune_steps: int = 300
    finetune_lr: float = 2e-3
    finetune_records: int = 40
    early_steps: int = 100
    early_lr: float = 2e-5
    early_records: int = 30
    eval_size: int = 256
    rank: int = 8
    operator: str = "fisher"
    lanczos_iters: int = 40
    slq_probes: int = 4
    lora_rank: int = 2
    taylor_order: int = 4
    threshold: float = 0.1

    __test__ = False  # not a pytest test class, despite the name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *fields: str) -> str:
        """Hash of the named fields (all when none): decides whether a checkpoint is reusable."""
        data = self.to_dict()
        if fields:
            data = {f: data[f] for f in fields}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


PRETRAIN_FIELDS = (
    "seeds", "seed", "n_symbols", "length", "modulus", "width", "depth", "heads", "batch",
    "pretrain_steps", "pretrain_lr", "pretrain_harmful_fraction",
)
ALIGN_FIELDS = (*PRETRAIN_FIELDS, "align_steps", "align_lr", "align_harmful_fraction")

_POSITIVE_INT = (
    "seeds", "n_symbols", "length", "width", "depth", "heads", "batch", "pretrain_steps", "align_steps",
    "finetune_size", "finetune_steps", "finetune_records", "early_steps", "early_records", "eval_size", "rank", "lanczos_iters",
    "slq_probes", "lora_rank", "taylor_order",
)
_POSITIVE_FLOAT = ("pretrain_lr", "align_lr", "finetune_lr", "early_lr", "threshold")


def validate(config: TestbedConfig) -> TestbedConfig:
    """Check every field; raises TestbedConfigError with one line."""
    for name in _POSITIVE_INT:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TestbedConfigError(f"{name}: must be an integer >= 1 (got {value!r})")
    if config.seed < 0:
        raise TestbedConfigError(f"seed: must be an integer >= 0 (got {config.seed})")
    for name in _POSITIVE_FLOAT:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not value > 0:
            raise TestbedConfigError(f"{name}: must be > 0 (got {value!r})")
    for name in ("pretrain_harmful_fraction", "align_harmful_fraction"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise TestbedConfigError(f"{name}: must be in [0, 1) (got {value})")
    if config.width % config.heads:
        raise TestbedConfigError(f"heads: must divide width={config.width} (got {config.heads})")
    if config.n_symbols < 4 or not 2 <= config.modulus <= config.n_symbols:
        raise TestbedConfigError(
            f"modulus: must be in [2, n_symbols] with n_symbols >= 4 (got {config.modulus}, {config.n_symbols})"
        )
    if not config.finetune_tasks:
        raise TestbedConfigError("finetune_tasks: needs at least one task")
    for task in config.finetune_tasks:
        if task not in TASKS:
            raise TestbedConfigError(f"finetune_tasks: unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if not 1 <= config.taylor_order <= 6:
        raise TestbedConfigError(f"taylor_order: must be an integer in [1, 6] (got {config.taylor_order!r})")
    if config.operator not in ("hessian", "fisher"):
        raise TestbedConfigError(f"operator: must be 'hessian' or 'fisher' (got {config.operator!r})")
    for prefix in ("finetune", "early"):
        records, steps = getattr(config, f"{prefix}_records"), getattr(config, f"{prefix}_steps")
        if not 2 <= records <= steps:
            raise TestbedConfigError(f"{prefix}_records: must be in [2, {prefix}_steps={steps}] (got {records})")
    return config


def make_testbed_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TestbedConfig:
    """Build a validated config from an optional TOML file plus overrides."""
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            with open(file, "rb") as handle:
                raw.update(tomllib.load(handle))
        except FileNotFoundError:
            raise TestbedConfigError(f"config: file not found: {file}") from None
        except tomllib.TOMLDecodeError as err:
            raise TestbedConfigError(f"config: {file} is not valid TOML ({err})") from None
    raw.update(overrides or {})
    raw.pop("repro", None)
    known = {f.name: f for f in dataclasses.fields(TestbedConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise TestbedConfigError(f"{key}: unknown key; allowed keys are {', '.join(sorted(known))}")
        default = getattr(TestbedConfig(), name)
        try:
            if name == "finetune_tasks":
                value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
            elif isinstance(default, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
        except (TypeError, ValueError):
            raise TestbedConfigError(f"{name}: cannot parse {value!r} as {type(default).__name__}") from None
        values[name] = value
    return validate(TestbedConfig(**values))
