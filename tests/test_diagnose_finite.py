"""No verdict from non-finite numbers: one line naming what and where, exit status 1, no report."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geomsim.diagnose.cli import main
from geomsim.finite import NonFiniteError, nonfinite_leaves, require_finite
from tests import diagnose_models

BAD = st.sampled_from([np.nan, np.inf, -np.inf])


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), data=st.data(), value=BAD)
def test_require_finite_names_the_leaf_the_count_and_the_first_index(shape, data, value):
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    flat = data.draw(st.integers(0, x.size - 1))
    x.reshape(-1)[flat] = value
    tree = {"ok": jnp.ones(3), "layer": [jnp.zeros(2, jnp.int32), jnp.asarray(x)]}
    with pytest.raises(NonFiniteError) as err:
        require_finite(tree, "theta0")
    message = str(err.value)
    assert message.startswith("theta0: ['layer'][1] holds 1 ") and "\n" not in message
    assert ("NaN" if np.isnan(value) else "inf") in message
    if x.size > 1:
        index = tuple(int(i) for i in np.unravel_index(flat, shape))
        assert message.endswith(f"of {x.size} values, the first at index {index}"), message
    require_finite({"ok": jnp.ones(3), "ints": jnp.arange(3)}, "theta0")  # negative control: nothing raised
    assert nonfinite_leaves([jnp.ones(2), 1.0]) == []


def test_host_and_device_checks_agree(monkeypatch):
    # Small leaves are counted with numpy on the host, large ones in one jitted program on their
    # device; both must say the same (float32, bfloat16 and a 0-d leaf included).
    import geomsim.finite as finite

    x = np.arange(24.0).reshape(2, 3, 4)
    x[1, 2, 0], x[0, 0, 3], x[1, 1, 1] = np.nan, np.inf, np.nan
    tree = {"a": jnp.asarray(x, jnp.float32), "b": jnp.asarray(x, jnp.bfloat16), "c": jnp.asarray(np.nan),
            "d": np.ones(5), "e": jnp.asarray(-np.inf)}
    host = nonfinite_leaves(tree)
    assert [path for path, _ in host] == ["['a']", "['b']", "['c']", "['e']"]
    assert host[0][1] == "2 NaN and 1 inf of 24 values, the first at index (0, 0, 3)"
    monkeypatch.setattr(finite, "HOST_CHECK_SIZE", 0)
    assert nonfinite_leaves(tree) == host


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["params", "align_batches", "task_batches"]), data=st.data(), value=BAD)
def test_non_finite_inputs_exit_1_with_one_line_and_no_report(where, data, value, tmp_path_factory, capsys):
    model = diagnose_models.linear_regression()
    leaves, treedef = jax.tree_util.tree_flatten(getattr(model, where))
    floats = [i for i, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size > 1]
    i = data.draw(st.sampled_from(floats))
    j = data.draw(st.integers(0, leaves[i].size - 1))
    leaves[i] = leaves[i].reshape(-1).at[j].set(value).reshape(leaves[i].shape)
    diagnose_models.IN_MEMORY["model"] = eqx.tree_at(lambda m: getattr(m, where), model,
                                                     jax.tree_util.tree_unflatten(treedef, leaves))
    out = tmp_path_factory.mktemp("nonfinite")
    assert main(["--model", "tests.diagnose_models:in_memory", "--rank", "2", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m geomsim.diagnose: error: "), err
    assert where.split("_")[0] in err[0] and ("NaN" if np.isnan(value) else "inf") in err[0], err
    assert not (out / "report.json").exists() and not (out / "report.md").exists()


@pytest.mark.parametrize(("factory", "message"), [
    ("zero_task_gradient", "task gradient at theta0: ||grad L_F|| = 0"),
    ("nan_task_loss", "loss at theta0: ['L_F'] holds 1 NaN"),
])
def test_measured_non_finite_or_zero_gradient_exit_1(factory, message, tmp_path, capsys):
    assert main(["--model", f"tests.diagnose_models:{factory}", "--rank", "2", "--out", str(tmp_path),
                 "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m geomsim.diagnose: error: {message}" + err[0].partition(message)[2]], err
    assert not (tmp_path / "report.json").exists()


def test_gd_past_lr_h_of_one_is_forecast_at_whole_steps(tmp_path):
    """1 < lr ||H_F|| < 2: gradient descent converges while its iterates alternate; the
    forecast is finite and equals plain gradient descent on the quadratic landscape."""
    from geomsim.diagnose.examples import quadratic
    from geomsim.io import loads_strict

    land = quadratic()
    top = float(np.linalg.eigvalsh(np.asarray(land.hess_task))[-1])
    lr = 1.5 / top
    assert main(["--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--optimizer", "gd", "--lr",
                 str(lr), "--horizon", str(40 * lr), "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    t = np.asarray(report["forecast"]["t"])
    forecast = np.asarray(report["forecast"]["align_increase"]["quadratic_gd"], dtype=float)
    assert np.all(np.isfinite(forecast))
    g, h = np.asarray(land.grad_task), np.asarray(land.hess_task)
    steps = np.floor(t / lr).astype(int)
    deltas = [np.zeros_like(g)]
    for _ in range(steps.max()):
        deltas.append(deltas[-1] - lr * (g + h @ deltas[-1]))
    reference = jax.vmap(land.align_increase)(jnp.asarray(np.stack(deltas)[steps]))
    np.testing.assert_allclose(forecast, reference, rtol=1e-8, atol=1e-14)
