"""Regenerate the tiny Hugging Face checkpoints and transformers' reference numbers.

    pip install torch==2.13.0 "transformers>=5" && python tests/hf_fixtures/regenerate.py

For every variant: a random transformers model with *every* parameter perturbed
(norm weights and biases start as constants, which would hide a swapped or
ignored tensor), saved as an HF folder, and `reference.npz` with transformers'
float32 logits on fixed input ids, the next-token loss, its gradient and one
Hessian-vector product (torch double backward) by tensor name.  The suite
compares geomsim against these files without torch (tests/test_hf_models.py),
and against transformers live where torch is installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VOCAB, SEQ = 64, 9  # sequences longer than the sliding windows (4) below
SMALL = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class name, config kwargs, hub-schema rewrite of config.json)
VARIANTS = {
    # GQA (4 query heads over 2 kv heads), untied head, default RoPE.
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2), False),
    # Tied embeddings, Llama 3.x RoPE scaling (both the smoothed and the divided band at
    # head_dim 4), every bias; config.json in the hub's schema (rope_theta, rope_scaling, torch_dtype).
    "llama3_tied": ("LlamaConfig", dict(SMALL, num_key_value_heads=1, tie_word_embeddings=True,
                                        attention_bias=True, mlp_bias=True,
                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                         "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 16}), True),
    # q/k/v biases; a sliding window on layer 1 (use_sliding_window, max_window_layers=1).
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                                  max_window_layers=1), False),
    # q/k RMSNorm; head_dim 6 != hidden_size / heads = 4.
    "qwen3": ("Qwen3Config", dict(SMALL, num_key_value_heads=2, head_dim=6), False),
    # (1 + w) norms, sqrt(D) embedding scale, GeGLU, multi-query attention.
    "gemma": ("GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=8), False),
    # Soft-caps, sandwich norms, query_pre_attn_scalar, alternating sliding window.
    "gemma2": ("Gemma2Config", dict(SMALL, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                    query_pre_attn_scalar=10, attn_logit_softcapping=5.0,
                                    final_logit_softcapping=3.0), False),
    # q/k (1 + w) norms, a RoPE base per layer type, linear scaling on the full layers.
    "gemma3": ("Gemma3TextConfig", dict(SMALL, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                        layer_types=["sliding_attention", "full_attention"],
                                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                            "rope_theta": 1e6},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 1e4}}), False),
    # Conv1D [in, out] weights, fused qkv, learned positions, gelu_new.
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=32,
                                bos_token_id=1, eos_token_id=2), False),
}


def input_ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=(2, SEQ))


def perturb(model, seed: int) -> None:
    """Add noise to every parameter (norm scales and biases included)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def direction(model, seed: int) -> dict:
    """A fixed random direction v per tensor (by name)."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(tuple(p.shape)).astype(np.float32) for n, p in model.named_parameters()}


def torch_reference(folder: Path, v: dict | None = None) -> dict:
    """transformers' logits, next-token loss, gradient and HVP on `folder` (float32, eager attention)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    ids = torch.as_tensor(input_ids())
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = v if v is not None else direction(model, 1)
    vs = [torch.as_tensor(v[n]) for n in names]
    hvp = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, vs, strict=True)), params)
    out = {"input_ids": ids.numpy(), "logits": logits.detach().numpy(), "loss": np.asarray(loss.item())}
    for n, g, u, h in zip(names, grads, vs, hvp, strict=True):
        out[f"grad/{n}"], out[f"v/{n}"], out[f"hvp/{n}"] = g.detach().numpy(), u.numpy(), h.numpy()
    return out


def to_hub_schema(folder: Path) -> None:
    """Rewrite config.json the way older transformers (and the hub) spell RoPE and dtype."""
    file = folder / "config.json"
    raw = json.loads(file.read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    raw["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    raw["torch_dtype"] = raw.pop("dtype")
    file.write_text(json.dumps(raw, indent=2) + "\n")


def build(name: str, seed: int) -> Path:
    import torch
    import transformers

    cls_name, kwargs, hub_schema = VARIANTS[name]
    torch.manual_seed(seed)
    config = getattr(transformers, cls_name)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    perturb(model, seed)
    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    if hub_schema:
        to_hub_schema(folder)
    np.savez_compressed(folder / "reference.npz", **torch_reference(folder))
    return folder


if __name__ == "__main__":
    for variant in sys.argv[1:] or VARIANTS:
        print(build(variant, seed=100 + list(VARIANTS).index(variant)))
