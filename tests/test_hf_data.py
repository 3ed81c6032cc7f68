"""Data a safety team has: the folder's tokenizer and chat template, JSONL sets,
the loss on response tokens only, padding that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.diagnose.hf import hf_aligned_model, response_logits
from geomsim.models import token_nll
from geomsim.models.hf import from_pretrained
from geomsim.models.hf.data import DataError, read_examples, read_jsonl, tokenize
from geomsim.models.hf.tiny import tiny_checkpoint
from geomsim.models.hf.tokenizer import load_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "hf"
ALIGN, TASK = EXAMPLES / "align.jsonl", EXAMPLES / "task.jsonl"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), texts=[ALIGN, TASK], seed=3)


def test_response_tokens_are_the_assistant_turns(folder):
    """With the chat template, the targets are exactly the response's tokens and the
    end-of-turn token; the prompt and the template's markup are never scored."""
    tok = load_tokenizer(folder)
    record = {"prompt": "What is 2 plus 2?", "response": "2 plus 2 is 4."}
    example = tokenize(tok, record)
    scored = [i for i, t in zip(example.ids, example.target, strict=True) if t]
    assert tok.tokenizer.decode(scored, skip_special_tokens=False) == "2 plus 2 is 4.<|end|>"
    assert tok.tokenizer.decode(list(example.ids), skip_special_tokens=False) == (
        "<|bos|><|user|>What is 2 plus 2?<|end|><|assistant|>2 plus 2 is 4.<|end|>")
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    example = tokenize(tok, chat)
    scored = [i for i, t in zip(example.ids, example.target, strict=True) if t]
    assert tok.tokenizer.decode(scored, skip_special_tokens=False) == "b<|end|>d<|end|>"


def test_without_a_chat_template_prompt_then_response_then_eos(folder, tmp_path):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        (plain / name).write_bytes((folder / name).read_bytes())
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(plain)
    example = tokenize(tok, {"prompt": "Hi", "response": " there"})
    assert list(example.ids) == tok.encode("Hi", special=True) + tok.encode(" there") + [tok.eos_id]
    n_prompt = len(tok.encode("Hi", special=True))
    assert example.target == (False,) * n_prompt + (True,) * (len(example.ids) - n_prompt)
    with pytest.raises(DataError, match="chat messages need the tokenizer's chat template"):
        tokenize(tok, {"messages": [{"role": "assistant", "content": "x"}]}, "f.jsonl:1")


def test_padded_batches_give_exactly_the_unpadded_loss(folder):
    """L_A from right-padded batches (one batch, or batches of 2) equals the mean NLL
    over every response token computed one example at a time without padding."""
    model = from_pretrained(folder, dtype=jnp.float64)
    tok = load_tokenizer(folder)
    examples = read_examples(tok, ALIGN)
    assert len({len(e.ids) for e in examples}) > 1  # the examples do need padding
    total, count = 0.0, 0
    for e in examples:
        ids = jnp.asarray(e.ids)[None]
        nll = token_nll(model(ids)[0, :-1], ids[0, 1:])
        mask = np.asarray(e.target[1:])
        total, count = total + float(jnp.sum(nll[mask])), count + int(mask.sum())
    expected = total / count
    for batch_size in (0, 2):
        aligned = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", batch_size=batch_size)
        assert aligned.align_batches.count == (1 if batch_size == 0 else 3)
        assert abs(float(aligned.align_loss(aligned.params)) - expected) < 1e-12 * expected
    # The logits the operators see: only the response positions, (N, vocab).
    (inputs, targets), = aligned.task_batches.data[:1]
    out = response_logits(model, inputs)
    assert out.shape == (targets.shape[0], model.config.vocab_size)


def test_jsonl_errors_name_the_file_and_line(folder, tmp_path):
    tok = load_tokenizer(folder)
    bad = tmp_path / "bad.jsonl"
    cases = [('{"prompt": "a", "response": "b"}\n{"prompt": oops}\n', "bad.jsonl:2: not valid JSON"),
             ('{"prompt": "a"}\n', "bad.jsonl:1: expected {\"prompt\", \"response\"} or {\"messages\"}"),
             ('{"messages": [{"role": "user", "content": "a"}]}\n', "bad.jsonl:1: no assistant turn"),
             ("\n\n", "bad.jsonl: no records")]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(DataError) as err:
            read_examples(tok, bad)
        assert message in str(err.value) and "\n" not in str(err.value)
    bad.write_text('{"prompt": "a long prompt here", "response": "b"}\n')
    with pytest.raises(DataError, match="no response token left to score within max_length=3"):
        read_examples(tok, bad, max_length=3)
    with pytest.raises(DataError, match="missing"):
        read_jsonl(tmp_path / "none.jsonl")


def test_live_transformers_reads_the_tiny_folder(folder):
    """transformers loads the folder (weights and tokenizer), its chat template gives
    our token ids, its logits are ours, and it generates."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Blue."}]
    theirs = hf_tok.apply_chat_template(messages, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert list(tokenize(load_tokenizer(folder), {"messages": messages}).ids) == list(theirs)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.as_tensor([list(theirs)])
    with torch.no_grad():
        logits = model(ids).logits.numpy()
    ours = np.asarray(from_pretrained(folder)(jnp.asarray(ids.numpy())))
    assert np.linalg.norm(ours - logits) < 1e-5 * np.linalg.norm(logits)
    out = model.generate(ids[:, :-2], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] - 2 + 4)
    jax.clear_caches()


def test_chunked_cross_entropy_and_remat_change_no_derivative(folder):
    """The fused loss (chunked cross-entropy, chunks that do not divide N) and remat
    give the plain loss's value, gradient and Hessian-vector product."""
    from jax.flatten_util import ravel_pytree

    plain = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", remat=False)
    fused = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", loss_chunk=8, remat=True)
    batch = plain.align_batches.data[0]
    assert batch[1].shape[0] % 8  # the last chunk is partial

    def unfused(p, b):
        return plain.output_loss(plain.apply_fn(p, b[0]), b[1])

    def derivatives(loss, params):
        flat, unravel = ravel_pytree(params)
        v = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
        f = lambda x: loss(unravel(x), batch)  # noqa: E731
        return f(flat), jax.grad(f)(flat), jax.jvp(jax.grad(f), (flat,), (v,))[1]

    pairs = zip(derivatives(fused.batch_loss, fused.params), derivatives(unfused, plain.params), strict=True)
    for ours, ref in pairs:
        assert jnp.linalg.norm(ours - ref) <= 1e-12 * jnp.linalg.norm(ref)
    assert fused.params.remat and not plain.params.remat


def _flat(tree):
    from jax.flatten_util import ravel_pytree

    return ravel_pytree(tree)[0]


def test_params_subset_is_the_block_of_the_full_curvature(folder):
    """--params: the restricted gradient and Hessian-vector product are the selected
    block of the full model's (other tensors frozen, not constants)."""
    from geomsim.models.hf import hf_tensors, with_tensors

    full = hf_aligned_model(folder, ALIGN, TASK, dtype="float64")
    sub = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", params="model.layers.1.mlp.*,model.norm.weight")
    assert sorted(sub.params) == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight",
                                  "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    assert "model.layers.0.mlp.up_proj.weight" in sub.frozen
    v = {n: jax.random.normal(jax.random.fold_in(jax.random.key(2), i), a.shape, a.dtype)
         for i, (n, a) in enumerate(sorted(sub.params.items()))}
    zeros = {n: jnp.zeros_like(a) for n, a in hf_tensors(full.params).items()}
    v_full = with_tensors(full.params, zeros | v)
    for data in ("align", "task"):
        g_full = hf_tensors(full.operator("hessian", data).gradient())
        hv_full = hf_tensors(full.operator("hessian", data).mv(v_full))
        g_sub = sub.operator("hessian", data).gradient()
        hv_sub = sub.operator("hessian", data).mv(v)
        for n in sub.params:
            assert jnp.allclose(g_sub[n], g_full[n], rtol=1e-9, atol=1e-13), n
            assert jnp.allclose(hv_sub[n], hv_full[n], rtol=1e-8, atol=1e-12), n


def test_lora_space_at_b_zero_matches_the_closed_form(folder):
    """LoRA adapters W + s B A with B = 0: the loss is the base loss, grad_A = 0,
    grad_B = s G A^T, and the adapter-space quadratic form is
    s^2 (dB A) : H_W (dB A) + 2 s G : (dB dA)  (docs/theory.md, section 12)."""
    from geomsim.models.hf import hf_tensors, with_tensors

    full = hf_aligned_model(folder, ALIGN, TASK, dtype="float64")
    lora = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", lora_rank=2, lora_alpha=4.0,
                            lora_targets="q_proj,down_proj", seed=5)
    s = 4.0 / 2
    assert sorted(lora.params) == [f"model.layers.{i}.{m}.weight" for i in (0, 1)
                                   for m in ("mlp.down_proj", "self_attn.q_proj")]
    assert abs(float(lora.task_loss(lora.params)) - float(full.task_loss(full.params))) < 1e-12
    op_full, op_lora = full.operator("hessian", "task"), lora.operator("hessian", "task")
    g = hf_tensors(op_full.gradient())
    g_lora = op_lora.gradient()
    d = {n: {"A": jax.random.normal(jax.random.fold_in(jax.random.key(3), i), ab["A"].shape, jnp.float64),
             "B": jax.random.normal(jax.random.fold_in(jax.random.key(4), i), ab["B"].shape, jnp.float64)}
         for i, (n, ab) in enumerate(sorted(lora.params.items()))}
    dw = {n: jnp.zeros_like(a) for n, a in g.items()}
    cross = 0.0
    for n, ab in lora.params.items():
        assert float(jnp.max(jnp.abs(g_lora[n]["A"]))) == 0.0
        assert jnp.allclose(g_lora[n]["B"], s * g[n] @ ab["A"].T, rtol=1e-9, atol=1e-13)
        dw[n] = s * d[n]["B"] @ ab["A"]
        cross += 2 * s * float(jnp.sum(g[n] * (d[n]["B"] @ d[n]["A"])))
    dw_tree = with_tensors(full.params, dw)
    expected = float(_flat(dw_tree) @ _flat(op_full.mv(dw_tree))) + cross
    ours = float(_flat(d) @ _flat(op_lora.mv(d)))
    assert abs(ours - expected) <= 1e-8 * abs(expected)


@pytest.mark.parametrize("params", ["", "model.layers.0.*,lm_head.weight"])
def test_chunked_gauss_newton_is_the_plain_one(folder, params):
    """The Gauss-Newton / Fisher products with the head applied 8 positions at a time
    (partial last chunk) equal the plain GGN and Fisher operators on the full
    `(response tokens, vocab)` logits."""
    from geomsim.curvature import fisher_operator, ggn_operator

    aligned = hf_aligned_model(folder, ALIGN, TASK, dtype="float64", loss_chunk=8, params=params)
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(4), a.shape, a.dtype), aligned.params)
    for data in ("align", "task"):
        batches = {"align": aligned.align_batches, "task": aligned.task_batches}[data]
        chunked = aligned.operator("ggn", data).mv(v)
        assert type(aligned.operator("fisher", data)).__name__ == "ChunkedGGNOperator"
        plain = ggn_operator(aligned.model_fn, aligned.output_loss, aligned.params, batches).mv(v)
        fisher = fisher_operator(aligned.model_fn, aligned.params, batches).mv(v)
        for ref in (plain, fisher):
            assert jnp.linalg.norm(_flat(chunked) - _flat(ref)) <= 1e-12 * jnp.linalg.norm(_flat(ref))


def test_a_template_that_rewrites_earlier_turns_is_refused(folder, tmp_path):
    """Qwen3's template drops an earlier assistant turn's reasoning once a later user
    turn follows; the turn's tokens cannot then be located, and geomsim says so rather
    than scoring the next turn's tokens."""
    import shutil

    changed = tmp_path / "rewrites"
    shutil.copytree(folder, changed)
    config = json.loads((changed / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                               "{% if m['role'] == 'assistant' and loop.last %} (final){% endif %}<|end|>"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (changed / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(changed)
    one = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert any(tokenize(tok, one).target)
    two = {"messages": [*one["messages"], {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    with pytest.raises(DataError, match="renders turn 1 differently inside the whole conversation"):
        tokenize(tok, two, "f.jsonl:1")


def test_lora_on_conv1d_weights_is_oriented_as_peft():
    """GPT-2 stores c_attn as [in, out]: the adapter's random A spans the input side
    (r x in) and B the output side (out x r), as PEFT's fan_in_fan_out does, and the
    update is added in the stored layout."""
    from geomsim.diagnose.hf import lora_adapters, lora_update
    from geomsim.models.hf import hf_tensors, transposed_names

    model = from_pretrained(Path(__file__).resolve().parent / "hf_fixtures" / "gpt2")
    tensors = hf_tensors(model)
    name = "transformer.h.0.attn.c_attn.weight"
    conv1d = transposed_names(model)
    assert name in conv1d and "transformer.wte.weight" not in conv1d and tensors[name].shape == (16, 48)
    ab = lora_adapters(tensors, [name], 2, jax.random.key(0), conv1d)[name]
    assert ab["A"].shape == (2, 16) and ab["B"].shape == (48, 2)
    ab["B"] = jax.random.normal(jax.random.key(1), ab["B"].shape, ab["B"].dtype)
    assert jnp.allclose(lora_update(ab, 3.0, True), 3.0 * (ab["B"] @ ab["A"]).T, rtol=1e-5, atol=1e-6)
