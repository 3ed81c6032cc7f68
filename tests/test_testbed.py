"""The transformer testbed on a tiny config: stages, checkpoints, ground truth, flax."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from geomsim.config import ConfigError
from geomsim.io import read_csv
from geomsim.models import Transformer, as_functional
from geomsim.tasks import answer_loss
from geomsim.testbed import diagnostics, stages
from geomsim.testbed.cli import main
from geomsim.testbed.config import make_testbed_config
from geomsim.testbed.run import run_testbed

from tiny_configs import TESTBED, as_flags

TINY = TESTBED


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    return run_testbed(make_testbed_config(None, TINY), out, progress=False)


def test_pipeline_outputs(tiny_run):
    out, s = tiny_run.out_dir, tiny_run.summary
    for name in ("stages", "spectrum", "diagnostics", "trajectories"):
        assert (out / f"{name}.csv").exists()
    for stem in ("fig_tb_spectrum", "fig_tb_forecast", "fig_tb_orthogonality", "fig_tb_taylor", "fig_tb_lora"):
        assert (out / f"{stem}.png").exists()
    assert json.loads((out / "summary.json").read_text())["seeds"] == 2
    # Alignment lowers the refusal loss relative to the pretrained model.
    assert s["stages"]["align"]["align_loss"] < s["stages"]["pretrain"]["align_loss"]
    traj = tiny_run.tables["trajectories"]
    assert set(traj["run"]) == {"full", "early", "lora"}
    assert set(traj["task"]) == {"copy", "sort", "marker_echo"}
    assert np.all(np.isfinite(traj["align_increase"]))
    corr = s["correlation"]["overlap"]
    assert -1 <= corr["rho"] <= 1 and corr["n_pairs"] == 6


def test_the_llama_model_runs_the_whole_testbed_from_its_flag(tmp_path):
    """`--model llama`: every stage (train, spectrum, diagnostics, the three fine-tunes) on the
    Llama-architecture DecoderLM of the registry, through the transformer's code."""
    from geomsim.testbed.models import MODELS

    settings = {**TINY, "seeds": 1, "finetune_tasks": "sort", "model": "llama", "taylor_order": 1}
    out = tmp_path / "llama"
    assert main(["--out", str(out), *as_flags(settings), "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    bed = stages.build(make_testbed_config(None, settings))
    llama = ravel_pytree(as_functional(MODELS["llama"].build(bed.model_config, jax.random.key(0), None))[1])[0].size
    transformer = ravel_pytree(stages.init_params(stages.build(make_testbed_config(None, TINY))))[0].size // 2
    assert summary["config"]["model"] == "llama" and summary["parameters"] == llama != transformer
    assert summary["stages"]["align"]["align_loss"] < summary["stages"]["pretrain"]["align_loss"]
    rows = read_csv(out / "diagnostics.csv")
    assert len(rows["eps"]) == 1 and all(np.all(np.isfinite(rows[f])) for f in ("eps", "coupling", "c4_leading"))
    assert np.all(np.isfinite(read_csv(out / "trajectories.csv")["align_increase"]))


def test_checkpoints_are_reused_when_the_config_allows(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(tiny_run.out_dir / "checkpoints", out / "checkpoints")
    res = run_testbed(make_testbed_config(None, {**TINY, "finetune_lr": 1e-3}), out, progress=False, stop_after="align")
    assert "pretrain" not in res.summary["timings"] and "align" not in res.summary["timings"]
    stages_table = res.tables["stages"]
    aligned = stages_table["align_loss"][stages_table["stage"] == "align"]
    # The reloaded aligned models are the ones the fixture trained.
    np.testing.assert_allclose(np.mean(aligned), tiny_run.summary["stages"]["align"]["align_loss"], rtol=1e-12)
    res = run_testbed(make_testbed_config(None, {**TINY, "align_steps": 31}), out, progress=False, stop_after="align")
    assert "align" in res.summary["timings"] and "pretrain" not in res.summary["timings"]


def test_recorded_trajectory_matches_a_plain_gradient_descent_loop():
    cfg = make_testbed_config(None, TINY)
    bed = stages.build(cfg)
    params = stages.init_params(bed)
    d = ravel_pytree(jax.tree.map(lambda x: x[0], params))[0].size
    basis = jnp.swapaxes(jnp.linalg.qr(jax.random.normal(jax.random.key(0), (cfg.seeds, d, 2)))[0], 1, 2)  # rows
    lam = jnp.ones((cfg.seeds, 2))
    traj = stages.finetune(bed, params, basis, lam, lr=0.05, steps=7, records=3)
    task = cfg.finetune_tasks.index("sort")
    p0 = jax.tree.map(lambda x: x[1], params)
    loss = bed.task_loss("sort")
    p = p0
    for _ in range(7):
        p = jax.tree.map(lambda a, g: a - 0.05 * g, p, jax.grad(loss)(p))
    np.testing.assert_allclose(traj.align_increase[task, 1, -1], bed.align_loss(p) - bed.align_loss(p0), rtol=1e-8)
    np.testing.assert_allclose(traj.task_loss[task, 1, -1], loss(p), rtol=1e-8)
    delta = ravel_pytree(p)[0] - ravel_pytree(p0)[0]
    np.testing.assert_allclose(traj.subspace_norm[task, 1, -1], jnp.linalg.norm(basis[1] @ delta), rtol=1e-8)
    np.testing.assert_allclose(traj.extra["s_quadratic"][task, 1, -1], 0.5 * jnp.sum((basis[1] @ delta) ** 2), rtol=1e-8)


def test_flax_twin_gives_the_same_diagnostics():
    pytest.importorskip("flax")
    from geomsim.models.flax_twins import transformer_to_flax

    cfg = make_testbed_config(None, {**TINY, "seeds": 1})
    bed = stages.build(cfg)
    model = Transformer(bed.model_config, key=jax.random.key(3))
    _, eqx_params = as_functional(model)
    module, flax_weights = transformer_to_flax(model)
    flax_apply, flax_params = as_functional(module, {"params": flax_weights})
    flax_bed = dataclasses.replace(bed, apply_fn=flax_apply)
    add_axis = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731
    # Each model its own S (flat coordinates differ between the two pytrees).
    diag_e, diag_f = (diagnostics.task_diagnostics(b, add_axis(p), diagnostics.spectrum(b, add_axis(p)), taylor_order=2)
                      for b, p in ((bed, eqx_params), (flax_bed, flax_params)))
    for key in ("sharpness", "eps", "coupling", "overlap", "grad_norm", "taylor"):
        np.testing.assert_allclose(diag_e[key], diag_f[key], rtol=1e-5, atol=1e-10)
    # Losses agree too, through the same metric functions.
    data = bed.task_train["sort"]
    np.testing.assert_allclose(answer_loss(bed.apply_fn, eqx_params, data), answer_loss(flax_apply, flax_params, data), rtol=1e-10)


def test_every_reported_aic_field_equals_the_dense_aic():
    """diagnostics.csv's AIC fields on a transformer small enough for dense matrices (d = 433):
    S from the dense Fisher of the first answer token on the harmful prompts (`J^T (diag p -
    p p^T) J`, from the Jacobian; the testbed's default operator), every field against
    `dense_model_aic`.  (The Hessian operator's path is `aic`'s own: tests/test_aic.py.)"""
    from geomsim.theory.aic_dense import dense_model_aic

    cfg = make_testbed_config(None, dict(seeds=1, n_symbols=4, length=2, modulus=2, width=4, depth=1, heads=1,
                                         finetune_tasks="copy", finetune_size=8, eval_size=6, rank=2,
                                         lanczos_iters=4, slq_probes=1))
    bed = stages.build(cfg)
    params = stages.init_params(bed)
    spec = diagnostics.spectrum(bed, params)
    diag = jax.tree.map(lambda x: np.asarray(x)[0, 0], diagnostics.task_diagnostics(bed, params, spec, taylor_order=2))
    p = jax.tree.map(lambda x: x[0], params)
    flat, unravel = ravel_pytree(p)
    task = bed.task_loss("copy")

    @jax.jit
    def dense(flat):  # one program: op by op, the Jacobians and Hessians compile per primitive
        prompts = bed.harm_eval.tokens[:, : bed.lang.answer_start]
        jac = jax.jacobian(lambda f: bed.apply_fn(unravel(f), prompts)[:, -1, :])(flat)  # (n, vocab, d)
        probs = jax.nn.softmax(bed.apply_fn(unravel(flat), prompts)[:, -1, :])
        cov = jax.vmap(jnp.diag)(probs) - probs[:, :, None] * probs[:, None, :]
        fisher = jnp.einsum("nvd,nvw,nwe->de", jac, cov, jac) / prompts.shape[0]
        fisher_s = dense_model_aic(bed.align_loss, task, unravel(flat), k=2, operator_matrix=fisher,
                                   third_order=False)
        hessian_s = dense_model_aic(bed.align_loss, task, unravel(flat), k=2, third_order=False)
        g = jax.grad(lambda f: task(unravel(f)))(flat)
        hg = jax.jvp(jax.grad(lambda f: task(unravel(f))), (flat,), (g,))[1]
        align_grad = jax.grad(lambda f: bed.align_loss(unravel(f)))(flat)
        return fisher_s, hessian_s, g, hg, align_grad

    ref, other, g, hg, align_grad = dense(flat)
    assert flat.shape == (433,)
    proj = ref.basis.T @ ref.basis
    basis = np.asarray(spec.basis[0])  # (k, d)
    expected = dict(
        sharpness=ref.sharpness, eps=ref.eps, coupling=ref.coupling, coupling_fisher=ref.coupling_fisher,
        overlap=ref.eps**2, grad_norm=ref.grad_norm, align_grad_norm=jnp.linalg.norm(align_grad),
        c4_leading=ref.taylor[4], c4_bound=ref.sharpness * ref.coupling**2 / 8,
        c4_bound_fisher=ref.coupling_fisher**2 / 8,
    )
    for field, value in expected.items():
        np.testing.assert_allclose(diag[field], value, rtol=1e-6, atol=1e-12, err_msg=field)
    np.testing.assert_allclose(diag["taylor"][1:3], ref.taylor[1:3], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(diag["s_grad"] @ basis, proj @ g, rtol=1e-6, atol=1e-10)  # P_S g
    np.testing.assert_allclose(diag["s_hg"] @ basis, proj @ hg, rtol=1e-6, atol=1e-10)  # P_S H_F g
    # Negative control: the Hessian's S gives other numbers (the fields follow the operator).
    assert abs(float(other.eps) - float(diag["eps"])) > 1e-2 * float(diag["eps"])


def test_config_errors_are_one_line(capsys):
    with pytest.raises(ConfigError, match="heads: must divide width"):
        make_testbed_config(None, {"width": 10, "heads": 3})
    with pytest.raises(ConfigError, match="finetune_tasks: must be one of"):
        make_testbed_config(None, {"finetune_tasks": "copy,nope"})
    with pytest.raises(ConfigError, match="taylor_order: must be in \\[1, 6\\]"):
        make_testbed_config(None, {"taylor_order": 7})
    with pytest.raises(ConfigError, match="operator"):
        make_testbed_config(None, {"operator": "ggn"})
    with pytest.raises(ConfigError, match="unknown key"):
        make_testbed_config(None, {"widht": 3})
    assert main(["--set", "seeds=0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m geomsim.testbed: error: seeds")


def test_seed_bootstrap_spearman_matches_scipy_draw_by_draw():
    from scipy import stats

    from geomsim.testbed import summary

    rng = np.random.default_rng(0)
    n_tasks, n_seeds = 5, 4
    seeds = np.tile(np.arange(n_seeds), n_tasks)
    x = rng.integers(0, 4, size=n_tasks * n_seeds).astype(float)  # ties on purpose
    y = x + rng.normal(size=x.size)
    res = summary.spearman_with_ci(x, y, seeds, np.random.default_rng(1))
    # The same seed draws, one scipy call each.
    picks = np.random.default_rng(1).integers(0, n_seeds, size=(summary.BOOTSTRAP, n_seeds))
    draws = []
    for pick in picks:
        idx = np.concatenate([np.flatnonzero(seeds == s) for s in pick])
        draws.append(stats.spearmanr(x[idx], y[idx]).statistic)
    np.testing.assert_allclose(res["ci95"], np.percentile(draws, [2.5, 97.5]), rtol=1e-12)
    np.testing.assert_allclose(res["rho"], stats.spearmanr(x, y).statistic)
    per_seed = [stats.spearmanr(x[seeds == s], y[seeds == s]).statistic for s in range(n_seeds)]
    np.testing.assert_allclose(res["per_seed_rho"], per_seed, rtol=1e-12)
    # A monotone relation is rho = 1 in every draw; a constant diagnostic has no rank information.
    assert summary.spearman_with_ci(x, np.exp(x), seeds, rng)["ci95"] == [1.0, 1.0]
    flat = summary.spearman_with_ci(np.ones_like(x), y, seeds, rng)
    assert np.all(np.isnan(flat["ci95"])) and np.isnan(flat["per_seed_mean"])


def test_the_summaries_median_keeps_or_drops_infinity_as_asked():
    """One median for the testbed's summaries: nan never counts; inf counts as a value (a
    forecast that never crosses is infinitely late) unless the caller drops it (steps to a
    target never reached)."""
    from geomsim.testbed.summary import median

    values = [1.0, np.nan, np.inf, np.inf, 2.0]
    assert median(values, drop_inf=False) == np.inf  # 1, 2, inf, inf -> the mean of 2 and inf
    assert median(values, drop_inf=True) == 1.5
    assert median([np.nan, np.inf], drop_inf=True) is None and median([], drop_inf=False) is None
