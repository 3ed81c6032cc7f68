"""End to end on a real-format model: the testbed's language on a Llama-architecture
model, saved as an HF folder with a tokenizer and JSONL sets, diagnosed with --hf."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.diagnose import DiagnoseConfig, diagnose
from geomsim.diagnose.hf import hf_aligned_model
from geomsim.landscapes import FunctionLandscape
from geomsim.testbed.config import TestbedConfig
from geomsim.testbed.hf_export import export, train_llama

import diagnose_models

TINY = TestbedConfig(n_symbols=6, length=3, modulus=5, width=16, depth=2, heads=4, batch=32, pretrain_steps=40,
                     align_steps=30, eval_size=24, finetune_size=24, finetune_tasks=("sort",))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    bed, model, metrics = train_llama(TINY)
    folder = export(bed, model, tmp_path_factory.mktemp("testbed-llama"), "sort")
    return bed, model, metrics, folder


def test_jsonl_losses_are_the_testbed_losses(exported):
    """From the folder's text files and tokenizer, L_A and L_F (and their gradients) are
    the testbed's refusal and answer losses of the same weights, to round-off."""
    bed, model, _, folder = exported
    aligned = hf_aligned_model(folder, folder / "align.jsonl", folder / "task.jsonl", dtype="float64")
    saved = jax.tree.map(lambda x: x.astype(jnp.float32).astype(jnp.float64), eqx.filter(model, eqx.is_inexact_array))
    for ours, theirs in ((aligned.align_loss, bed.align_loss), (aligned.task_loss, bed.task_loss("sort"))):
        a, ga = jax.value_and_grad(ours)(aligned.params)
        b, gb = jax.value_and_grad(theirs)(saved)
        assert abs(float(a) - float(b)) < 1e-12 * abs(float(b))
        fa, fb = jax.flatten_util.ravel_pytree(ga)[0], jax.flatten_util.ravel_pytree(gb)[0]
        assert float(jnp.linalg.norm(fa - fb)) < 1e-10 * float(jnp.linalg.norm(fb))


def test_diagnose_hf_reproduces_the_in_memory_diagnosis(exported, tmp_path):
    bed, model, metrics, folder = exported
    saved = jax.tree.map(lambda x: x.astype(jnp.float32).astype(jnp.float64), eqx.filter(model, eqx.is_inexact_array))
    diagnose_models.IN_MEMORY["model"] = FunctionLandscape(theta0=saved, align_fn=bed.align_loss,
                                                           task_fn=bed.task_loss("sort"))
    settings = dict(rank=2, krylov=24, points=16, defenses=("none",))  # the AIC's parity; the table: test_processes
    ours = diagnose(DiagnoseConfig(hf=str(folder), align=str(folder / "align.jsonl"),
                                   task=str(folder / "task.jsonl"), dtype="float64", **settings),
                    tmp_path / "hf", quiet=True)
    theirs = diagnose(DiagnoseConfig(model="diagnose_models:in_memory", **settings), tmp_path / "mem", quiet=True)
    for field in ("sharpness", "coupling", "eps", "mu", "grad_norm"):
        a, b = ours["aic"][field], theirs["aic"][field]
        assert abs(a - b) <= 1e-6 * abs(b), (field, a, b)
    assert np.allclose(ours["aic"]["taylor"][1:], theirs["aic"]["taylor"][1:], rtol=1e-6)
    assert json.loads((tmp_path / "hf" / "report.json").read_text())["model"] == str(folder)
    assert metrics["harm_rate"] <= 1.0  # the stages ran and evaluated


def test_live_transformers_generates_from_the_exported_folder(exported):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    bed, model, _, folder = exported
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = json.loads((folder / "align.jsonl").read_text().splitlines()[0])["prompt"]
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.shape[1] == bed.lang.answer_start
    out = hf.generate(ids, max_new_tokens=bed.lang.length, do_sample=False, pad_token_id=0)
    greedy = np.asarray(model(jnp.asarray(ids.numpy()))[0, -1].argmax())
    assert int(out[0, ids.shape[1]]) == int(greedy)  # transformers' first generated token is ours
