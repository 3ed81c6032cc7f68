"""Read a Hugging Face `config.json` into the static shape of a geomsim model.

Every key is accounted for: a key is either read into the maths (`DecoderConfig`
or `TransformerConfig`), known not to change the logits (token ids, caching,
dropout at evaluation, initialisation, bookkeeping), or refused with one line
naming it.  An unknown key is refused too: geomsim cannot tell whether it
changes the model's outputs, and a silent wrong logit is the one failure a
curvature diagnosis cannot detect afterwards.

Both schemas are read: checkpoints on the hub carry top-level `rope_theta`,
`rope_scaling` and `torch_dtype`; transformers 5 writes `rope_parameters` and
`dtype`.  Gemma 3 nests one RoPE dict per layer type.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from geomsim.models.transformer import TransformerConfig

# Architecture name in config.json -> family read by `parse_config`.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "GPT2LMHeadModel": "gpt2",
}

# Keys that do not change the logits of a causal LM evaluated without cache or dropout.
_NEUTRAL = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "cache_implementation", "initializer_range", "attention_dropout", "max_position_embeddings",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "torchscript", "use_bfloat16",
    "pruned_heads", "chunk_size_feed_forward", "tf_legacy_loss", "is_decoder", "is_encoder_decoder",
    "pretraining_tp",  # a split of the same matmul (Llama 2); the same maths
    "embd_pdrop", "attn_pdrop", "resid_pdrop", "summary_type", "summary_use_proj", "summary_activation",
    "summary_proj_to_labels", "summary_first_dropout", "n_ctx", "max_window_layers", "_sliding_window_pattern",
    "sliding_window_pattern", "use_sliding_window", "final_dropout", "output_past", "sliding_window_size",
    "_attn_implementation", "attn_implementation", "keys_to_ignore_at_inference", "torch_compile",
    "n_special", "predict_special_tokens",  # GPT-2 medium/large: OpenAI GPT leftovers transformers ignores
    # Generation settings older configs carry (they act at decoding, not on the logits).
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "temperature",
    "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "diversity_penalty",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "output_scores", "return_dict_in_generate", "transformers.js_config",
}
# Keys allowed only with the value that leaves the maths as geomsim computes it.
_MUST_BE = {
    "add_cross_attention": (False,), "use_bidirectional_attention": (None, False), "use_mrope": (False,),
    "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,),
    "partial_rotary_factor": (1, 1.0), "quantization_config": (None,), "tie_encoder_decoder": (False,),
}
# Activation names of transformers' ACT2FN that geomsim computes the same way.
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedConfig(ValueError):
    """A config.json geomsim cannot reproduce exactly (one line, naming the field)."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Static shape and maths of a Llama-family decoder (Llama, Qwen2/3, Gemma 1/2/3).

    norm_offset: 1.0 for Gemma's `(1 + w) * x_hat` RMSNorm, 0.0 for `w * x_hat`.
    sandwich_norms: Gemma 2/3's extra norms on the attention and MLP outputs.
    embed_scale: multiply the token embeddings by sqrt(hidden_size) (Gemma).
    attn_scale: the factor on `q . k` (head_dim^-1/2, or query_pre_attn_scalar^-1/2).
    windows: per layer, the sliding-window length or None (full causal attention).
    inv_freq: per layer, the RoPE inverse frequencies (float32 values, as transformers
        computes them), `head_dim / 2` of them.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    activation: str
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    norm_offset: float
    sandwich_norms: bool
    embed_scale: bool
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    windows: tuple[int | None, ...]
    inv_freq: tuple[tuple[float, ...], ...]
    max_positions: int
    # The whole config.json it was read from (frozen: hashable), which save_pretrained writes back.
    hf_config: tuple = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.architecture]


def _fail(field: str, message: str) -> UnsupportedConfig:
    return UnsupportedConfig(f"config.json: unsupported: {field} ({message})")


def architecture_of(raw: dict) -> str:
    names = raw.get("architectures") or []
    if len(names) != 1:
        raise _fail("architectures", f"expected one architecture, got {names!r}")
    name = names[0]
    if name not in ARCHITECTURES:
        raise _fail("architectures", f"{name!r} is not one of {', '.join(ARCHITECTURES)}")
    return name


def _check_keys(raw: dict, used: set[str], architecture: str) -> None:
    for key, value in raw.items():
        if key in used or key in _NEUTRAL:
            continue
        if key in _MUST_BE:
            if value not in _MUST_BE[key]:
                raise _fail(key, f"{value!r}; geomsim computes only {_MUST_BE[key][0]!r}")
            continue
        raise _fail(key, f"unknown key for {architecture}; geomsim cannot tell whether it changes the logits")


def rope_parameters(raw: dict, layer_type: str | None = None, default_theta: float = 10000.0) -> dict:
    """The RoPE dict of one layer type, from either schema (transformers 5's
    `rope_parameters`, nested per layer type for Gemma 3, or the hub's top-level
    `rope_theta` + `rope_scaling`, with Gemma 3's `rope_local_base_freq` for its
    sliding layers, which are never scaled); `default_theta` where none is given."""
    params = raw.get("rope_parameters")
    if params is not None:
        if layer_type is not None and any(isinstance(v, dict) for v in params.values()):
            params = params.get(layer_type) or {}
        params = dict(params)
        params.setdefault("rope_theta", default_theta)
    elif layer_type == "sliding_attention":
        params = {"rope_type": "default", "rope_theta": raw.get("rope_local_base_freq", default_theta)}
    else:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", default_theta))
    if "type" in params and "rope_type" not in params:  # the oldest spelling
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    return params


def rope_inv_freq(params: dict, head_dim: int, max_positions: int) -> tuple[float, ...]:
    """RoPE inverse frequencies in float32, computed as transformers computes them
    (`modeling_rope_utils`: default, linear and llama3 types)."""
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise _fail("rope_type", f"{kind!r}; supported: {', '.join(ROPE_TYPES)}")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise _fail("partial_rotary_factor", f"{params['partial_rotary_factor']!r}; geomsim rotates the whole head")
    base = np.float32(params["rope_theta"])
    inv = (np.float32(1.0) / (base ** (np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim))))
    inv = inv.astype(np.float32)
    if kind == "linear":
        inv = (inv / np.float32(params["factor"])).astype(np.float32)
    elif kind == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old = params.get("original_max_position_embeddings", max_positions)
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > old / low, inv / np.float32(factor), inv).astype(np.float32)
        smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if key in params:
            raise _fail(f"rope_parameters.{key}", "geomsim applies no attention scaling to the rotary embedding")
    return tuple(float(f) for f in inv)


def _layer_types(raw: dict, family: str, num_layers: int) -> list[str]:
    if raw.get("layer_types") is not None:
        types = list(raw["layer_types"])
    elif family == "gemma2":
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
    elif family == "gemma3":
        pattern = raw.get("sliding_window_pattern", raw.get("_sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    elif family in ("qwen2", "qwen3") and raw.get("use_sliding_window"):
        start = raw.get("max_window_layers", num_layers)
        types = ["sliding_attention" if i >= start else "full_attention" for i in range(num_layers)]
    else:
        types = ["full_attention"] * num_layers
    if len(types) != num_layers or set(types) - {"full_attention", "sliding_attention"}:
        raise _fail("layer_types", f"{types!r} for {num_layers} layers")
    return types


def _decoder(raw: dict, architecture: str) -> DecoderConfig:
    family = ARCHITECTURES[architecture]
    gemma = family.startswith("gemma")
    used = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act", "hidden_activation",
            "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_parameters", "rope_theta", "rope_scaling",
            "rope_local_base_freq", "layer_types", "sliding_window"}
    if family in ("gemma2", "gemma3"):
        used |= {"query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"}
    _check_keys(raw, used, architecture)
    try:
        d, heads, layers = int(raw["hidden_size"]), int(raw["num_attention_heads"]), int(raw["num_hidden_layers"])
        vocab, inter = int(raw["vocab_size"]), int(raw["intermediate_size"])
    except KeyError as err:
        raise _fail(err.args[0], "missing") from None
    kv = int(raw.get("num_key_value_heads") or heads)
    if heads % kv:
        raise _fail("num_key_value_heads", f"{kv} does not divide num_attention_heads={heads}")
    # transformers' defaults where config.json is silent: Gemma 256, Qwen3 128, else D / heads.
    head_dim = int(raw.get("head_dim") or (256 if gemma else 128 if family == "qwen3" else d // heads))
    # Which key transformers reads: Gemma 2/3 `hidden_activation`, the others `hidden_act`
    # (Gemma 1 maps its legacy "gelu" to the tanh approximation, as transformers does).
    if family in ("gemma2", "gemma3"):
        act_name = raw.get("hidden_activation") or "gelu_pytorch_tanh"
    else:
        act_name = raw.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
        act_name = "gelu_pytorch_tanh" if gemma and act_name == "gelu" else act_name
    if act_name not in ACTIVATIONS:
        raise _fail("hidden_act", f"{act_name!r}; supported: {', '.join(ACTIVATIONS)}")
    max_positions = int(raw.get("max_position_embeddings", 2048))
    types = _layer_types(raw, family, layers)
    window = raw.get("sliding_window")
    if "sliding_attention" in types and not window:
        raise _fail("sliding_window", f"{window!r} with sliding layers")
    if family == "gemma3":  # transformers' defaults: base 1e6 on full layers, 1e4 on sliding ones
        theta = {"full_attention": 1e6, "sliding_attention": 1e4}
        inv = {t: rope_inv_freq(rope_parameters(raw, t, theta[t]), head_dim, max_positions) for t in set(types)}
        inv_freq = tuple(inv[t] for t in types)
    else:
        params = rope_parameters(raw)
        inv_freq = (rope_inv_freq(params, head_dim, max_positions),) * layers
    # Gemma 2/3: transformers' defaults where a key is absent (present and null means none).
    caps = {"gemma2": (50.0, 30.0), "gemma3": (None, None)}.get(family, (None, None))
    sandwich = family in ("gemma2", "gemma3")
    scalar = raw.get("query_pre_attn_scalar", 256) if sandwich else None
    bias = bool(raw.get("attention_bias", False))
    return DecoderConfig(
        architecture=architecture, vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)), activation=ACTIVATIONS[act_name],
        tie_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
        qkv_bias=bias or family == "qwen2", o_bias=bias, mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=family in ("qwen3", "gemma3"), norm_offset=1.0 if gemma else 0.0,
        sandwich_norms=sandwich, embed_scale=gemma,
        attn_scale=float((scalar or head_dim) ** -0.5),
        attn_softcap=raw.get("attn_logit_softcapping", caps[0]) if sandwich else None,
        final_softcap=raw.get("final_logit_softcapping", caps[1]) if sandwich else None,
        windows=tuple(int(window) if t == "sliding_attention" else None for t in types),
        inv_freq=inv_freq, max_positions=max_positions,
        hf_config=_freeze(raw),
    )


def _gpt2(raw: dict, architecture: str) -> TransformerConfig:
    used = {"vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "activation_function",
            "layer_norm_epsilon", "tie_word_embeddings"}
    _check_keys(raw, used, architecture)
    d = int(raw.get("n_embd", 768))
    inner = raw.get("n_inner") or 4 * d
    if inner % d:
        raise _fail("n_inner", f"{inner} is not a multiple of n_embd={d}")
    act = raw.get("activation_function", "gelu_new")
    if ACTIVATIONS.get(act) not in ("gelu", "gelu_tanh"):
        raise _fail("activation_function", f"{act!r}; supported: gelu, gelu_new, gelu_pytorch_tanh")
    if raw.get("tie_word_embeddings", True) is False:
        raise _fail("tie_word_embeddings", "GPT2LMHeadModel ties its head to wte")
    return TransformerConfig(
        vocab_size=int(raw.get("vocab_size", 50257)), seq_len=int(raw.get("n_positions", 1024)), width=d,
        depth=int(raw.get("n_layer", 12)), num_heads=int(raw.get("n_head", 12)), mlp_ratio=inner // d,
        tie_embeddings=True, layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        activation=ACTIVATIONS[act],
    )


def _freeze(value: Any) -> Any:
    """A hashable copy of a JSON value (configs are static fields of the model)."""
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value


def thaw(value: Any) -> Any:
    """The JSON value `_freeze` made hashable."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__dict__":
        return {k: thaw(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__list__":
        return [thaw(v) for v in value[1]]
    return value


def parse_config(raw: dict) -> DecoderConfig | TransformerConfig:
    """The model config of an HF `config.json` dict (`UnsupportedConfig` on anything
    geomsim would compute differently)."""
    architecture = architecture_of(raw)
    if ARCHITECTURES[architecture] == "gpt2":
        return _gpt2(raw, architecture)
    return _decoder(raw, architecture)
