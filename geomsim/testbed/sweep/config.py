"""Settings of the transformer sharpness x coupling sweep (`python -m geomsim.testbed sweep`)."""

from __future__ import annotations

from dataclasses import dataclass

from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, option_like, positive
from geomsim.tasks.language import TASKS
from geomsim.testbed import config as bed_config
from geomsim.testbed.config import BedConfig

ARMS = ("polished_eps0", "polished", "as_trained")


@dataclass(frozen=True)
class TestbedSweepConfig(BedConfig):
    """Every setting of the sweep (units: steps, nats, gradient-flow time).

    Grid: `refusal_sigma` (sharpness knob: each level aligns its own models to
    refuse harmful prompts with probability 1 - sigma) x `mix` (coupling knob:
    the benign task `(1 - a) L_<task_base> + a L_<task_other>`) x `seeds`.
    """

    # The language, model, pretraining and alignment: `BedConfig`'s; these defaults differ.
    seeds: int = option_like(BedConfig, "seeds", 4, help="independent models per sharpness level (>= 1)")
    align_steps: int = option_like(BedConfig, "align_steps", 200,
                                   help="AdamW alignment steps per sharpness level (>= 1)")
    align_harmful_fraction: float = option_like(
        BedConfig, "align_harmful_fraction", 0.3, check=in_range(0, 1, open_lo=True, open_hi=True),
        help="fraction of harmful requests (refused) in alignment batches, in (0, 1): the calibration needs some")
    eval_size: int = option_like(BedConfig, "eval_size", 128,
                                 help="held-out examples for harm rate and task accuracy (>= 1)")
    rank: int = option_like(BedConfig, "rank", 1)
    refusal_sigma: tuple[float, ...] = option(
        (0.3, 0.1, 0.03, 0.01), help="sharpness knob: target non-refusal probability per level, each in (0, 0.5)",
        check=each(in_range(0, 0.5, open_lo=True, open_hi=True)))
    align_set: int = option(128, help="harmful prompts defining L_A (the polished fixed set) (>= 2)", check=at_least(2))
    hold_set: int = option(64, help="benign examples whose answers the polish holds fixed (>= 1)", check=at_least(1))
    polish_steps: int = option(24, help="Gauss-Newton steps of the polish at most (>= 1)", check=at_least(1))
    task_base: str = option("copy", help=f"benign base task, one of {', '.join(TASKS)}", check=one_of(*TASKS))
    task_other: str = option("marker_echo", help=f"benign task mixed in, one of {', '.join(TASKS)}",
                             check=one_of(*TASKS))
    mix: tuple[float, ...] = option(
        (0.03, 0.1, 0.3, 1.0), help="coupling knob: weight a of task_other, each in [0, 1]",
        check=each(in_range(0, 1)))
    task_size: int = option(16, help="fine-tuning examples per component task (>= 1)", check=at_least(1))
    num_eigs: int = option(8, help="top alignment eigenpairs measured per model (> rank)", check=at_least(2))
    flow_t_min: float = option(1e-3, help="first recorded flow time, in units of 1/||H_F|| (> 0)", check=positive)
    flow_t_max: float = option(10.0, help="last recorded flow time, in units of 1/||H_F|| (> flow_t_min)",
                               check=positive)
    flow_ratio: float = option(1.5, help="ratio of consecutive flow times (one fixed solver step each), in (1, 4]",
                               check=in_range(1, 4, open_lo=True))
    flow_solver: str = option("bosh3", help="Runge-Kutta method of the flow steps: bosh3 (3rd order, 3 gradients "
                              "per step) or tsit5 (5th order, 6)", check=one_of("bosh3", "tsit5"))
    adam_lr: float = option(3e-4, help="learning rate of the realistic Adam fine-tune (> 0)", check=positive)
    adam_batch: int = option(16, help="fresh examples per component task in each Adam step (>= 1)", check=at_least(1))
    adam_steps: int = option(200, help="Adam fine-tuning steps; the fixed step of the report (>= 2)",
                             check=at_least(2))
    adam_records: int = option(20, help="recorded Adam steps, log-spaced (2..adam_steps)", check=at_least(2))
    accuracy_target: float = option(0.9, help="task accuracy at which Adam's damage is read, in (0, 1]",
                                    check=in_range(0, 1, open_lo=True))
    slope_tol: float = option(0.1, help="half-width of the local-slope band of an onset window (> 0)", check=positive)
    min_decades: float = option(0.5, help="shortest onset window, decades of t (> 0)", check=positive)
    chunk: int = option(8, help="runs per vmapped batch (memory vs speed; 8 keeps the default sweep near 3.5 GiB) (>= 1)",
                        check=at_least(1))

    def check(self) -> None:
        super().check()
        if not self.rank < self.num_eigs:
            raise ConfigError(f"num_eigs: must be > rank={self.rank} (got {self.num_eigs})")
        if not self.flow_t_max > self.flow_t_min:
            raise ConfigError(f"flow_t_max: must be > flow_t_min={self.flow_t_min:g} (got {self.flow_t_max:g})")
        if not self.adam_records <= self.adam_steps:
            raise ConfigError(f"adam_records: must be in [2, adam_steps={self.adam_steps}] (got {self.adam_records})")
        if self.task_other == self.task_base:
            raise ConfigError(f"task_other: must differ from task_base={self.task_base!r} (the mix would do nothing)")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(sharpness levels, coupling levels, seeds)."""
        return len(self.refusal_sigma), len(self.mix), self.seeds


# The settings of the sweep's own stages (beyond their parents': see `stage_key`).
ALIGN_FIELDS = (*bed_config.ALIGN_FIELDS, "refusal_sigma")
POLISH_FIELDS = ("align_set", "hold_set", "polish_steps")
SPECTRUM_FIELDS = ("rank", "num_eigs", "eval_size")
TASK_FIELDS = ("task_base", "task_other", "mix", "task_size")
