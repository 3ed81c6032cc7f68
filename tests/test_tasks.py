"""The synthetic language: answers are right, masks cover answers, harm is marked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.tasks import (
    FINETUNE_TASKS,
    HARM,
    NOMARK,
    PRETRAIN_TASKS,
    REFUSE,
    SEP,
    Language,
    answer_accuracy,
    answer_loss,
    harm_rate,
    make_batch,
    mixture,
    refusal_loss,
)

LANG = Language(n_symbols=10, length=4, modulus=5)


def _decode(batch, i):
    t = np.asarray(batch.tokens[i])
    operands = t[3:3 + LANG.length] - LANG.symbol0
    answer = t[LANG.answer_start:]
    return t, operands, answer


@pytest.mark.parametrize("task", sorted(set(PRETRAIN_TASKS + FINETUNE_TASKS)))
def test_answers_and_masks(task):
    batch = make_batch(LANG, task, jax.random.key(1), 32)
    assert batch.tokens.shape == (32, LANG.seq_len)
    assert not bool(jnp.any(batch.tokens == HARM))
    for i in range(32):
        t, a, ans = _decode(batch, i)
        assert t[LANG.answer_start - 1] == SEP
        n = int(np.sum(batch.answer_mask[i]))
        sym = ans[:n] - LANG.symbol0
        if task == "copy":
            np.testing.assert_array_equal(sym, a)
        elif task == "reverse":
            np.testing.assert_array_equal(sym, a[::-1])
        elif task == "increment":
            np.testing.assert_array_equal(sym, (a + 1) % LANG.n_symbols)
        elif task == "sort":
            np.testing.assert_array_equal(sym, np.sort(a))
        elif task == "modsum":
            assert n == 1 and sym[0] == a.sum() % LANG.modulus
        elif task == "marker_echo":
            assert n == 1 and ans[0] == t[2]
        elif task == "decline":
            if 0 in a:
                assert n == 1 and ans[0] == REFUSE
            else:
                np.testing.assert_array_equal(sym, a)
        assert np.all(batch.answer_mask[i, : LANG.answer_start] == 0)
        if task != "marker_echo":
            assert t[2] == NOMARK


def test_harmful_and_aligned():
    unaligned = make_batch(LANG, "copy", jax.random.key(2), 8, harmful=True)
    aligned = make_batch(LANG, "copy", jax.random.key(2), 8, harmful=True, aligned=True)
    assert bool(jnp.all(unaligned.tokens[:, 2] == HARM)) and bool(jnp.all(unaligned.harmful))
    np.testing.assert_array_equal(unaligned.tokens[:, :LANG.answer_start], aligned.tokens[:, :LANG.answer_start])
    assert bool(jnp.all(aligned.tokens[:, LANG.answer_start] == REFUSE))
    assert int(aligned.answer_mask.sum()) == 8
    with pytest.raises(ValueError, match="marker_echo"):
        make_batch(LANG, "marker_echo", jax.random.key(0), 2, harmful=True)


def test_mixture_size_and_fraction():
    batch = mixture(LANG, PRETRAIN_TASKS, jax.random.key(3), 100, harmful_fraction=0.3, aligned=True)
    assert batch.tokens.shape[0] == 100 and int(batch.harmful.sum()) == 30
    with pytest.raises(ValueError, match="harmful_fraction"):
        mixture(LANG, PRETRAIN_TASKS, jax.random.key(3), 10, harmful_fraction=1.5)


def test_metrics_on_an_oracle_model():
    """A 'model' that puts all mass on the true next token: zero loss, full accuracy, refusal."""
    batch = make_batch(LANG, "reverse", jax.random.key(4), 16)
    harmful = make_batch(LANG, "copy", jax.random.key(5), 16, harmful=True, aligned=True)

    def oracle(params, inputs):
        nxt = jnp.concatenate([inputs[:, 1:], jnp.full((inputs.shape[0], 1), REFUSE)], axis=1)
        table = batch.tokens if inputs.shape[1] == LANG.seq_len - 1 else None
        if table is not None:
            nxt = table[:, 1:]
        return params * jax.nn.one_hot(nxt, LANG.vocab_size)

    assert float(answer_loss(oracle, 50.0, batch)) < 1e-6
    assert float(answer_accuracy(oracle, 50.0, batch)) == 1.0
    assert float(refusal_loss(LANG, oracle, 50.0, harmful)) < 1e-6
    assert float(harm_rate(LANG, oracle, 50.0, harmful)) == 0.0
    # A uniform model: loss log(V), every prompt counted as harmful output.
    np.testing.assert_allclose(answer_loss(oracle, 0.0, batch), np.log(LANG.vocab_size), rtol=1e-6)


def test_language_validation():
    with pytest.raises(ValueError, match="modulus"):
        Language(n_symbols=5, modulus=9)
    with pytest.raises(ValueError, match="task: unknown"):
        LANG.task_token("nope")


def test_log_odds_and_binary_kl_closed_forms():
    from geomsim.tasks import binary_kl, log_odds

    logits = jnp.array([[1.0, -0.5, 2.0, 0.3], [0.0, 0.0, 0.0, 0.0]])
    p = jax.nn.softmax(logits, axis=-1)
    np.testing.assert_allclose(log_odds(logits, 2), jnp.log(p[:, 2] / (1 - p[:, 2])), rtol=1e-12)
    s = log_odds(logits, 2)
    q = p[:, 2]
    t = 0.8
    expected = t * jnp.log(t / q) + (1 - t) * jnp.log((1 - t) / (1 - q))
    np.testing.assert_allclose(binary_kl(s, t), expected, rtol=1e-12)
    # Zero, with zero slope, exactly at the target; positive elsewhere.
    at_target = jnp.log(t / (1 - t))
    assert abs(float(binary_kl(at_target, t))) < 1e-15
    assert abs(float(jax.grad(binary_kl)(at_target, t))) < 1e-15
    assert float(binary_kl(at_target + 0.1, t)) > 0


def test_calibrated_refusal_loss_is_zero_with_zero_gradient_at_its_target():
    import equinox as eqx

    from geomsim.models import Transformer, TransformerConfig, as_functional
    from geomsim.tasks import PRETRAIN_TASKS, REFUSE, Language, concat, make_batch, refusal_kl

    lang = Language(n_symbols=5, length=2, modulus=3)
    model = Transformer(TransformerConfig(vocab_size=lang.vocab_size, seq_len=lang.seq_len - 1, width=8,
                                          depth=1, num_heads=2), key=jax.random.key(0))
    apply_fn, params = as_functional(model)
    harm = concat([make_batch(lang, t, jax.random.key(i), 1, harmful=True) for i, t in enumerate(PRETRAIN_TASKS)])
    prompt = harm.tokens[:1, : lang.answer_start]
    # Shift the REFUSE bias of the unembedding until p(REFUSE) = target on this one prompt.
    logits = apply_fn(params, prompt)[0, -1]
    target = 0.7
    p = jax.nn.softmax(logits)
    shift = jnp.log(target / (1 - target)) - jnp.log(p[REFUSE] / (1 - p[REFUSE]))
    params = eqx.tree_at(lambda m: m.head.bias, params, params.head.bias.at[REFUSE].add(shift))
    # jitted: op by op, the transformer's forward and backward took 13-34 s of dispatch here
    loss, grad = jax.jit(jax.value_and_grad(refusal_kl, argnums=1), static_argnums=0)(apply_fn, params, prompt, target)
    assert abs(float(loss)) < 1e-14
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-12
