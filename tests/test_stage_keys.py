"""The testbed's stage keys and its shared config: saved work is reused exactly when nothing
that made it changed (no training here: the keys and one toy checkpoint)."""

import dataclasses
import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from geomsim import config as config_layer
from geomsim.config import ConfigError
from geomsim.sweep.progress import Progress
from geomsim.testbed.checkpoints import checkpointed
from geomsim.testbed.config import PRETRAIN_FIELDS, BedConfig, TestbedConfig, pretrain_key
from geomsim.testbed.sweep import TestbedSweepConfig
from geomsim.testbed.sweep import stages as sweep_stages
from geomsim.testbed.sweep.run import LAW_FIELDS, model_keys


def _keys(cfg):
    keys = model_keys(cfg)
    return {**keys, "law": config_layer.stage_key(cfg, LAW_FIELDS, keys["spectrum"])}


def test_a_change_reaches_its_stage_and_every_stage_after_it_only():
    base = _keys(TestbedSweepConfig())
    order = ["pretrain", "sweep_align", "sweep_polish", "spectrum", "law"]
    # (field, new value, the first stage it belongs to)
    for field, value, first in (("model", "llama", "pretrain"), ("width", 16, "pretrain"),
                                ("align_lr", 2e-3, "sweep_align"), ("refusal_sigma", (0.2,), "sweep_align"),
                                ("polish_steps", 3, "sweep_polish"), ("num_eigs", 5, "spectrum"),
                                ("flow_ratio", 2.0, "law")):
        changed = _keys(dataclasses.replace(TestbedSweepConfig(), **{field: value}))
        moved = [stage for stage in order if changed[stage] != base[stage]]
        assert moved == order[order.index(first):], field


def test_every_setting_reaches_a_stage_key_or_is_read_after_the_runs():
    """A new field in no stage's settings would be reused stale: each field of the sweep and
    its two extensions is in a key, or listed here as read only by the summaries."""
    from geomsim.testbed.sweep.config import ALIGN_FIELDS, POLISH_FIELDS, SPECTRUM_FIELDS
    from geomsim.testbed.sweep.defenses import DEFENSE_FIELDS, REGISTRY, TestbedDefenseConfig
    from geomsim.testbed.sweep.forecast import FORECAST_FIELDS, TestbedForecastConfig
    from geomsim.testbed.sweep.run import ADAM_FIELDS

    models = {*PRETRAIN_FIELDS, *ALIGN_FIELDS, *POLISH_FIELDS, *SPECTRUM_FIELDS}
    post_hoc = {"accuracy_target", "slope_tol", "min_decades"}  # the summaries' settings
    for cls, keyed, after in (
        (TestbedSweepConfig, {*LAW_FIELDS, *ADAM_FIELDS}, post_hoc),
        (TestbedDefenseConfig, {*DEFENSE_FIELDS, *(f for d in REGISTRY.values() for f in d.own_fields), "defenses",
                                "defense_growth"}, post_hoc | {"flow_t_min", "flow_t_max", "flow_ratio",
                                                               "flow_solver", "chunk"}),
        (TestbedForecastConfig, set(FORECAST_FIELDS), post_hoc | {"flow_t_min", "flow_t_max", "flow_ratio",
                                                                  "flow_solver", "threshold", "calibration"}),
    ):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields - models - keyed == after, cls.__name__


def test_the_code_version_is_in_every_key(monkeypatch):
    base = _keys(TestbedSweepConfig())
    monkeypatch.setattr(config_layer, "code_version", lambda: "other code")
    assert all(v != base[k] for k, v in _keys(TestbedSweepConfig()).items())


def test_the_code_version_hashes_the_package_sources(tmp_path):
    """Negative control of the key's code part: a copy of the layer in another package tree
    hashes that tree, and an edit to any file of it gives another version."""
    package = tmp_path / "geomsim"
    package.mkdir()
    (package / "config.py").write_text(Path(config_layer.__file__).read_text())
    (package / "other.py").write_text("x = 1\n")

    def version():
        spec = importlib.util.spec_from_file_location("copied_config", package / "config.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.code_version()

    first = version()
    assert version() == first
    (package / "other.py").write_text("x = 2\n")
    assert version() != first


def test_the_testbed_and_the_sweep_share_one_pretrained_model():
    """One declaration of the shared settings (`BedConfig`): the sweep's testbed config has
    the sweep's values of every one of them, and the same pretraining key."""
    sweep = dataclasses.replace(TestbedSweepConfig(), width=16, heads=2, seeds=2, model="llama")
    bed = sweep_stages.testbed_config(sweep)
    assert (bed.width, bed.heads, bed.seeds, bed.model, bed.align_steps, bed.eval_size) == (16, 2, 2, "llama", 200, 128)
    assert bed.finetune_tasks == (sweep.task_base, sweep.task_other) and bed.finetune_size == sweep.task_size
    assert pretrain_key(bed) == pretrain_key(sweep)
    assert pretrain_key(TestbedConfig()) != pretrain_key(TestbedSweepConfig())  # 3 vs 4 seeds by default
    shared = {f.name for f in dataclasses.fields(BedConfig)}
    assert shared <= {f.name for f in dataclasses.fields(TestbedSweepConfig)}
    assert shared <= {f.name for f in dataclasses.fields(TestbedConfig)}


def test_the_sweep_keeps_the_shared_fields_checks_with_its_own_defaults():
    assert (TestbedSweepConfig().seeds, TestbedConfig().seeds) == (4, 3)
    for cls in (TestbedConfig, TestbedSweepConfig):
        with pytest.raises(ConfigError, match="^seeds: must be >= 1"):
            config_layer.build(cls, None, {"seeds": 0})
        with pytest.raises(ConfigError, match="^model: must be one of"):
            config_layer.build(cls, None, {"model": "gpt"})
    # The calibrated alignment needs harmful requests; the testbed's does not.
    assert config_layer.build(TestbedConfig, None, {"align_harmful_fraction": 0}).align_harmful_fraction == 0
    for value in (0, 1, -0.1):
        with pytest.raises(ConfigError, match=r"^align_harmful_fraction: must be in \(0, 1\)"):
            config_layer.build(TestbedSweepConfig, None, {"align_harmful_fraction": value})


def test_a_checkpoint_is_loaded_under_its_key_and_recomputed_under_another(tmp_path):
    like = {"w": jnp.zeros(3)}
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"w": jnp.full(3, value)}, value
        return run

    kwargs = dict(timings={}, bar=Progress(3, "t", enabled=False))
    params, aux, loaded = checkpointed(tmp_path, "stage", "key-a", like, compute(1.0), **kwargs)
    assert (aux, loaded, calls) == (1.0, False, [1.0])
    params, aux, loaded = checkpointed(tmp_path, "stage", "key-a", like, compute(2.0), **kwargs)
    assert (aux, loaded, calls) == (None, True, [1.0])
    np.testing.assert_array_equal(params["w"], np.ones(3))
    params, aux, loaded = checkpointed(tmp_path, "stage", "key-b", like, compute(2.0), **kwargs)
    assert (aux, loaded, calls) == (2.0, False, [1.0, 2.0])
    np.testing.assert_array_equal(params["w"], np.full(3, 2.0))
