"""Bad model factories for tests/test_diagnose.py."""


def not_a_landscape():
    return 42


def linear_regression():
    """An AlignedModel whose losses are exactly quadratic (linear outputs, Gaussian
    likelihood): its Gauss-Newton matrices equal its Hessians, so every bounded
    forecast is the exact flow."""
    import jax
    import jax.numpy as jnp

    from geomsim.diagnose import AlignedModel

    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    params = {"w": jax.random.normal(k1, (3, 2)), "b": jnp.zeros(2)}

    def apply_fn(p, x):
        return x @ p["w"] + p["b"]

    xa, xf = jax.random.normal(k2, (24, 3)), jax.random.normal(k3, (24, 3)) * jnp.array([1.0, 0.5, 2.0])
    align = (xa, apply_fn(params, xa) + 0.1 * jax.random.normal(k4, (24, 2)))
    task = (xf, jnp.stack([jnp.sin(xf[:, 0]), xf[:, 1] * xf[:, 2]], axis=-1))
    return AlignedModel(params, apply_fn, align_batches=align, task_batches=task, likelihood="gaussian")


IN_MEMORY = {}  # set by a test: the in-memory model the next `in_memory()` factory call returns


def in_memory():
    return IN_MEMORY["model"]


def zero_task_gradient():
    """theta0 at the task's minimum: ||grad L_F|| = 0, fine-tuning does not move."""
    import jax.numpy as jnp

    from geomsim.landscapes import FunctionLandscape

    return FunctionLandscape(theta0={"w": jnp.ones(6)}, align_fn=lambda p: jnp.sum(jnp.arange(6.0) * (p["w"] - 1) ** 2),
                             task_fn=lambda p: jnp.sum((p["w"] - 1) ** 2))


def nan_task_loss():
    """Finite theta0 whose task loss is NaN there (log of a negative number)."""
    import jax.numpy as jnp

    from geomsim.landscapes import FunctionLandscape

    return FunctionLandscape(theta0={"w": jnp.ones(6)}, align_fn=lambda p: jnp.sum(p["w"] ** 2),
                             task_fn=lambda p: jnp.sum(p["w"]) + jnp.log(p["w"][0] - 2.0))
