"""Tiny settings shared by the CLI tests and the README test (identical programs hit the
persistent compilation cache instead of compiling twice)."""

TESTBED = dict(
    seeds=2, n_symbols=6, length=3, modulus=3, width=16, depth=1, heads=2, batch=32,
    pretrain_steps=40, align_steps=30, finetune_tasks="copy,sort,marker_echo", finetune_size=16,
    finetune_steps=12, finetune_records=6, early_steps=8, early_records=4, eval_size=24, rank=2,
    lanczos_iters=8, slq_probes=2, lora_rank=1, taylor_order=2,  # order 4 doubles the diagnostics' compile
)

TESTBED_SWEEP = dict(
    seeds=2, n_symbols=6, length=3, modulus=3, width=16, depth=1, heads=2, batch=32, pretrain_steps=150,
    align_steps=100, refusal_sigma="0.3,0.03", mix="0.1,1", align_set=24, hold_set=8, task_size=8, eval_size=24,
    num_eigs=4, adam_steps=10, adam_records=5, adam_batch=8, polish_steps=12, chunk=8,
)

# The defenses on the tiny sweep's models (the same programs as tests/test_testbed_sweep.py).
TESTBED_DEFENSES = {**TESTBED_SWEEP, "defense_every": 3, "tracked_matvecs": 10}

# The forecast validation on the same models.
TESTBED_FORECAST = {**TESTBED_SWEEP, "gd_steps": 40, "gd_records": 8, "krylov": 8, "forecast_points": 32,
                    "adam_batches": 4}


def as_flags(settings: dict) -> list[str]:
    """`{"seeds": 2}` -> `["--seeds", "2"]`."""
    return [item for key, value in settings.items() for item in ("--" + key.replace("_", "-"), str(value))]
