"""geomsim.watchdog: a watched call gives its value or its error; one that makes no progress
is `Stalled` naming it, and a diagnosis stops there with no report (the sweep's retry in a fresh
worker and its one-line error: tests/test_processes.py)."""

import time

import jax.numpy as jnp
import pytest

from geomsim import watchdog
from geomsim.watchdog import Stalled, stall_limit, watched


def test_value_error_and_stall(monkeypatch):
    assert float(watched("sum", jnp.sum, jnp.ones(3))) == 3.0

    def fails():
        raise ZeroDivisionError("inner")

    with pytest.raises(ZeroDivisionError, match="inner"):
        watched("fails", fails)
    with stall_limit(0.3):  # a slow call that does return is not a stall
        assert watched("slow", lambda: time.sleep(0.1) or 7) == 7
    monkeypatch.setenv("GEOMSIM_TEST_STALL", "chunk 2@1")
    t0 = time.perf_counter()
    with stall_limit(0.3), pytest.raises(Stalled, match=r"^my chunk 2/5: no progress for 0\.3 s \(--stall-timeout"):
        watched("my chunk 2/5", jnp.sum, jnp.ones(3))
    assert 0.3 <= time.perf_counter() - t0 < 5
    assert float(watched("my chunk 2/5", jnp.sum, jnp.ones(3), attempt=2)) == 3.0  # past @1: runs
    assert float(watched("my chunk 1/5", jnp.sum, jnp.ones(3))) == 3.0  # other names: run


def test_flag_sets_the_limit_and_refuses_bad_values(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="p")
    watchdog.add_stall_flag(parser)
    before = watchdog.current_limit()
    try:
        assert vars(parser.parse_args(["--stall-timeout", "12.5"])) == {}  # nothing for the config
        assert watchdog.current_limit() == 12.5
        for bad in ("0", "-1", "nan", "inf", "soon"):
            with pytest.raises(SystemExit):
                parser.parse_args(["--stall-timeout", bad])
            assert "argument --stall-timeout: expected a finite number of seconds > 0" in capsys.readouterr().err
    finally:
        watchdog.set_limit(before)


def test_a_stalled_diagnosis_is_an_error_naming_the_step_and_writes_no_report(monkeypatch, tmp_path):
    from geomsim.diagnose import DiagnoseConfig, diagnose

    monkeypatch.setenv("GEOMSIM_TEST_STALL", "diagnose: the measurement at theta0")
    config = DiagnoseConfig(model="geomsim.diagnose.examples:quadratic", rank=2)
    with stall_limit(0.5), pytest.raises(Stalled, match="^diagnose: the measurement at theta0: no progress for 0.5 s"):
        diagnose(config, tmp_path / "d", quiet=True)
    assert not (tmp_path / "d" / "report.json").exists()
