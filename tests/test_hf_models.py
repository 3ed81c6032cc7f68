"""Hugging Face checkpoints: parity with transformers, round trips, one-line errors.

Every architecture has a tiny checkpoint in tests/hf_fixtures/ with every
parameter perturbed and transformers' own float32 logits, next-token loss,
gradient and Hessian-vector product (tests/hf_fixtures/regenerate.py).  The
tests compare geomsim against those numbers without torch; where torch and
transformers are importable (CI installs them), they also recompute them live
from the same folders and load what `save_pretrained` wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.models import cross_entropy
from geomsim.models.hf import (
    CheckpointError,
    UnsupportedConfig,
    from_pretrained,
    hf_tensors,
    save_pretrained,
    with_tensors,
)

FIXTURES = Path(__file__).resolve().parent / "hf_fixtures"
VARIANTS = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").exists())


def rel(a, b) -> float:
    """Norm-wise relative error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference(name: str) -> dict:
    return dict(np.load(FIXTURES / name / "reference.npz"))


def next_token_loss(model, ids):
    logits = model(ids)
    return cross_entropy(logits[:, :-1], ids[:, 1:])


def loss_grad_hvp(model, ids, v_model):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    v = eqx.filter(v_model, eqx.is_inexact_array)

    def loss(p):
        return next_token_loss(eqx.combine(p, static), ids)

    value, grad = jax.value_and_grad(loss)(params)
    _, hvp = jax.jvp(jax.grad(loss), (params,), (v,))
    return value, eqx.combine(grad, static), eqx.combine(hvp, static)


def compare(model, ref: dict, tol: float):
    ids = jnp.asarray(ref["input_ids"])
    v_model = with_tensors(model, {k[2:]: a for k, a in ref.items() if k.startswith("v/")})
    loss, grad, hvp = eqx.filter_jit(loss_grad_hvp)(model, ids, v_model)
    errors = {"loss": rel(loss, ref["loss"])}
    for label, tree in (("grad", grad), ("hvp", hvp)):
        ours = hf_tensors(tree)
        assert sorted(ours) == sorted(k[len(label) + 1:] for k in ref if k.startswith(label + "/"))
        errors[label] = max(rel(a, ref[f"{label}/{n}"]) for n, a in ours.items())
    assert max(errors.values()) < tol, errors
    return errors


@pytest.mark.parametrize("name", VARIANTS)
def test_parity_with_transformers_reference(name):
    """Logits (float32) to 1e-5 relative; loss, gradient and HVP (float64 from the same
    float32 weights) to 1e-4 relative per tensor, against transformers' float32 numbers."""
    ref = reference(name)
    model32 = from_pretrained(FIXTURES / name, dtype=jnp.float32)
    logits = np.asarray(eqx.filter_jit(lambda m, x: m(x))(model32, jnp.asarray(ref["input_ids"])))
    assert logits.dtype == np.float32 and logits.shape == ref["logits"].shape
    assert rel(logits, ref["logits"]) < 1e-5
    compare(from_pretrained(FIXTURES / name, dtype=jnp.float64), ref, tol=1e-4)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_parity_negative_controls(name, tmp_path):
    """The comparison can fail: one swapped tensor pair, or one maths switch of the
    config flipped, moves the logits far past the tolerance."""
    ref = reference(name)
    ids = jnp.asarray(ref["input_ids"])
    model = from_pretrained(FIXTURES / name, dtype=jnp.float64)
    tensors = hf_tensors(model)
    a, b = {"llama": ("model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"),
            "gemma2": ("model.layers.1.pre_feedforward_layernorm.weight",
                       "model.layers.1.post_feedforward_layernorm.weight"),
            "gpt2": ("transformer.h.0.ln_1.bias", "transformer.h.0.ln_2.bias")}[name]
    tensors[a], tensors[b] = tensors[b], tensors[a]
    assert rel(with_tensors(model, tensors)(ids), ref["logits"]) > 1e-3
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    raw = json.loads((folder / "config.json").read_text())
    flip = {"llama": ("rms_norm_eps", 0.5), "gemma2": ("final_logit_softcapping", None),
            "gpt2": ("activation_function", "gelu")}[name]
    raw[flip[0]] = flip[1]
    (folder / "config.json").write_text(json.dumps(raw))
    assert rel(from_pretrained(folder, dtype=jnp.float64)(ids), ref["logits"]) > 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_save_load_round_trip(name, tmp_path):
    """save_pretrained writes the fixture's tensors bit for bit under the same names and
    a config.json that parses to the same model; loading it back gives the same model."""
    model = from_pretrained(FIXTURES / name)
    save_pretrained(model, tmp_path)
    from safetensors.numpy import load_file

    ours, theirs = load_file(tmp_path / "model.safetensors"), load_file(FIXTURES / name / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), k
    again = from_pretrained(tmp_path)
    assert again.config == model.config
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(model), strict=True))


def test_sharded_and_bf16_checkpoints(tmp_path):
    """A checkpoint split over two shards with an index loads to the same model; a bf16
    checkpoint stays bf16 (or is cast on request), with logits within bf16 round-off."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(FIXTURES / "qwen3" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(FIXTURES / "qwen3" / "config.json", folder)
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    whole, split = from_pretrained(FIXTURES / "qwen3"), from_pretrained(folder)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(split), strict=True))

    import ml_dtypes

    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    shutil.copy(FIXTURES / "qwen3" / "config.json", bf16)
    save_file({k: a.astype(ml_dtypes.bfloat16) for k, a in tensors.items()}, bf16 / "model.safetensors")
    model = from_pretrained(bf16)
    assert {leaf.dtype for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))} == {jnp.dtype(jnp.bfloat16)}
    ids = jnp.asarray(reference("qwen3")["input_ids"])
    logits = model(ids)
    assert logits.dtype == jnp.bfloat16
    assert rel(logits, whole(ids)) < 3e-2
    assert jax.tree.leaves(from_pretrained(bf16, dtype=jnp.float32))[0].dtype == jnp.float32


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    (folder / "reference.npz").unlink()
    return folder


def _edit_config(folder: Path, **changes) -> None:
    raw = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            raw.pop(k)
        else:
            raw[k] = v
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["MistralForCausalLM"]}, "unsupported: architectures ('MistralForCausalLM'"),
    ({"sliding_window_size_hint": 3}, "unsupported: sliding_window_size_hint (unknown key for Gemma2ForCausalLM"),
    ({"attn_logit_softcapping": 5.0, "use_bidirectional_attention": True}, "unsupported: use_bidirectional_attention"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "unsupported: rope_type ('yarn'"),
    ({"hidden_activation": "swiglu_oai"}, "unsupported: hidden_act ('swiglu_oai'"),
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, "unsupported: quantization_config"),
    ({"num_key_value_heads": 3}, "unsupported: num_key_value_heads (3 does not divide"),
])
def test_config_refused_in_one_line(changes, message, tmp_path):
    folder = _copy("gemma2", tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(UnsupportedConfig) as err:
        from_pretrained(folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_errors_name_the_file_or_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    def error(folder) -> str:
        with pytest.raises(CheckpointError) as err:
            from_pretrained(folder)
        assert "\n" not in str(err.value)
        return str(err.value)

    folder = _copy("llama", tmp_path)  # a tensor whose shape disagrees with the config
    _edit_config(folder, intermediate_size=20)
    assert error(folder).startswith("model.layers.0.mlp.gate_proj.weight: shape (24, 16) disagrees")

    folder = _copy("qwen2", tmp_path / "missing")  # a tensor missing
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, folder / "model.safetensors")
    assert error(folder).startswith("model.layers.1.self_attn.k_proj.bias: tensor missing")

    folder = _copy("gpt2", tmp_path / "extra")  # a tensor of another architecture
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.attn.q_norm.weight"] = np.ones(4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    assert "transformer.h.0.attn.q_norm.weight: tensor geomsim does not know" in error(folder)

    folder = _copy("llama", tmp_path / "truncated")  # a truncated file
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "truncated" in error(folder)

    folder = _copy("llama", tmp_path / "shard")  # a shard listed in the index but absent
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in tensors}}
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert error(folder).endswith("model-00002-of-00002.safetensors: missing shard (listed in "
                                  "model.safetensors.index.json)")

    folder = _copy("llama", tmp_path / "pickled")  # pickled weights only
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert "refuses to load (unpickling runs arbitrary code)" in error(folder)
    assert error(tmp_path / "nothing").endswith("nothing: not a folder (expected a Hugging Face checkpoint folder)")
    (tmp_path / "empty").mkdir()
    assert error(tmp_path / "empty").endswith("config.json: missing (a Hugging Face checkpoint folder has config.json)")


# --- live: transformers itself, where it is installed -------------------------------------------

def _transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("name", VARIANTS)
def test_live_transformers_parity_and_reload(name, tmp_path):
    """transformers recomputes logits, gradient and HVP on the committed folder (the
    fixture is current for the installed version), and loads what save_pretrained
    wrote (float64 weights saved from geomsim) to the same logits."""
    _transformers()
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        from regenerate import torch_reference
    finally:
        sys.path.pop(0)
    committed = reference(name)
    live = torch_reference(FIXTURES / name, v={k[2:]: a for k, a in committed.items() if k.startswith("v/")})
    assert rel(live["logits"], committed["logits"]) < 1e-6
    compare(from_pretrained(FIXTURES / name, dtype=jnp.float64), live, tol=1e-4)

    save_pretrained(from_pretrained(FIXTURES / name, dtype=jnp.float32), tmp_path)
    reloaded = torch_reference(tmp_path, v={k[2:]: a for k, a in committed.items() if k.startswith("v/")})
    assert rel(reloaded["logits"], committed["logits"]) < 1e-6


def test_keys_that_leave_the_logits_alone_are_accepted(tmp_path):
    """Older hub configs carry bookkeeping and generation keys (GPT-2's `output_past`,
    `task_specific_params`, `max_length`...): read past, the logits unchanged."""
    folder = _copy("gpt2", tmp_path)
    _edit_config(folder, output_past=True, n_ctx=32, max_length=50, do_sample=True, top_k=5,
                 task_specific_params={"text-generation": {"do_sample": True}})
    ref = reference("gpt2")
    logits = from_pretrained(folder, dtype=jnp.float32)(jnp.asarray(ref["input_ids"]))
    assert rel(logits, ref["logits"]) < 1e-5


def test_gpt2_tensors_without_the_transformer_prefix(tmp_path):
    """The original GPT-2 checkpoints store `wte.weight`, `h.0...` (no `transformer.`);
    they load to the same model, and a tensor neither name knows is still refused."""
    from safetensors.numpy import load_file, save_file

    folder = _copy("gpt2", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("transformer."): a for k, a in tensors.items()}, folder / "model.safetensors")
    ours, ref = from_pretrained(folder), from_pretrained(FIXTURES / "gpt2")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True))
    save_file({**load_file(folder / "model.safetensors"), "h.0.attn.q_norm.weight": np.ones(4, np.float32)},
              folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="transformer.h.0.attn.q_norm.weight: tensor geomsim does not know"):
        from_pretrained(folder)


def test_missing_keys_take_transformers_defaults():
    """Where config.json is silent, geomsim takes transformers' defaults (Gemma 2's
    soft-caps 50 / 30 and query_pre_attn_scalar 256, Qwen3's head_dim 128, Gemma 3's
    RoPE bases 1e6 / 1e4), not its own."""
    from geomsim.models.hf import parse_config

    def raw(name, **drop):
        config = json.loads((FIXTURES / name / "config.json").read_text())
        return {k: v for k, v in config.items() if k not in drop}

    c = parse_config(raw("gemma2", attn_logit_softcapping=1, final_logit_softcapping=1, query_pre_attn_scalar=1))
    assert (c.attn_softcap, c.final_softcap, c.attn_scale) == (50.0, 30.0, 256 ** -0.5)
    assert parse_config(raw("qwen3", head_dim=1)).head_dim == 128
    hub = raw("gemma3", rope_parameters=1)  # the hub's schema, no bases given
    c = parse_config(hub)
    assert c.inv_freq[1][1] == pytest.approx(1e6 ** (-2 / 8), rel=1e-6)  # the full layer
    assert c.inv_freq[0][1] == pytest.approx(1e4 ** (-2 / 8), rel=1e-6)  # the sliding layer
    hub["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    c = parse_config(hub)  # scaling applies to the full layers only
    assert c.inv_freq[1][1] == pytest.approx(1e6 ** (-2 / 8) / 4, rel=1e-6)
    assert c.inv_freq[0][1] == pytest.approx(1e4 ** (-2 / 8), rel=1e-6)
