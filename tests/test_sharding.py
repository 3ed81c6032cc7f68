"""Data- and model-parallel curvature on forced host devices equals the one-device result."""

import subprocess
import sys
import textwrap

import jax

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import geomsim, jax, jax.numpy as jnp, equinox as eqx, numpy as np
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", {disable})
    assert len(jax.devices()) == 4
    from jax.flatten_util import ravel_pytree
    from geomsim.curvature import eigsh, ggn_operator, hessian_operator
    from geomsim.curvature.sharding import MODEL, batch_sharding, device_mesh, shard_operator
    from geomsim.models import cross_entropy
    from geomsim.theory import aic_factory

    model = eqx.nn.MLP(8, 4, 16, 2, key=jax.random.key(0))
    params, static = eqx.partition(jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x,
                                                model), eqx.is_inexact_array)
    x = jax.random.normal(jax.random.key(1), (32, 8))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
    xt = jax.random.normal(jax.random.key(3), (32, 8))
    yt = (xt[:, 0] > 0).astype(jnp.int32)
    apply = lambda p, inputs: jax.vmap(eqx.combine(p, static))(inputs)
    loss = lambda p, b: cross_entropy(apply(p, b[0]), b[1])
    ops = {{"hessian": hessian_operator(loss, params, (x, y)),
            "ggn": ggn_operator(apply, cross_entropy, params, (x, y))}}
    v = jax.random.normal(jax.random.key(4), (ravel_pytree(params)[0].size,))
    mv = jax.jit(lambda op, v: op.mv_flat(v))
    top = jax.jit(lambda op, k: eigsh(4, tol=1e-10)(op, k))
    ref = {{name: (mv(op, v), top(op, jax.random.key(5))) for name, op in ops.items()}}
    for data, mdl in ((1, 4), (2, 2)):  # FSDP alone; both (the 2 x 2 mesh splits the batch too)
        mesh = device_mesh(data=data, model=mdl)
        for name, op in ops.items():
            sharded = shard_operator(op, mesh)
            if mdl > 1:  # FSDP: the weight matrices really are split
                specs = [leaf.sharding.spec for leaf in jax.tree.leaves(sharded.params) if leaf.ndim == 2]
                assert all(MODEL in spec for spec in specs), specs
            if data > 1:
                assert "data" in sharded.batches.data[0][0].sharding.spec
            hv, eig = mv(sharded, v), top(sharded, jax.random.key(5))
            np.testing.assert_allclose(hv, ref[name][0], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(eig.eigenvalues, ref[name][1].eigenvalues, rtol=1e-9)
    task = lambda p, b: cross_entropy(apply(p, b[0]), b[1])
    measure = jax.jit(lambda p, ab, tb, k: aic_factory(2, trace_samples=4, tol=1e-10)(
        loss, task, p, align_batches=ab, task_batches=tb, key=k))
    base = measure(params, (x, y), (xt, yt), jax.random.key(6))
    mesh = device_mesh(data=2, model=2)
    placed = shard_operator(ops["hessian"], mesh).params
    ab, tb = (jax.device_put(b, batch_sharding(mesh, b)) for b in ((x, y), (xt, yt)))
    res = measure(placed, ab, tb, jax.random.key(6))
    for field in ("sharpness", "eps", "coupling", "tail_mass", "taylor"):
        np.testing.assert_allclose(getattr(res, field), getattr(base, field), rtol=1e-8, err_msg=field)
    print("OK")
""")


def test_sharded_curvature_equals_the_single_device_result():
    script = SCRIPT.format(disable=jax.config.read("jax_disable_most_optimizations"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
