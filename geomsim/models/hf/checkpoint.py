"""Hugging Face checkpoint folders <-> geomsim models.

`from_pretrained(path)` reads `config.json` and the safetensors weights (one
`model.safetensors` or the shards of `model.safetensors.index.json`) into a
`DecoderLM` (Llama, Qwen2/3, Gemma 1/2/3) or a `geomsim.models.Transformer`
(GPT-2); `save_pretrained(model, path)` writes a folder transformers loads back.

The tensor names are one table per family (`_layout`), read both ways, so the
loader and the writer cannot disagree.  Weights are read with
`safetensors.numpy` (no torch); bf16 arrives as `ml_dtypes.bfloat16` and stays
bf16 unless a dtype is asked for.  Pickled `pytorch_model.bin` weights are
refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from geomsim.models.hf.config import DecoderConfig, parse_config, thaw
from geomsim.models.hf.decoder import DecoderLM
from geomsim.models.transformer import Transformer, TransformerConfig

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
# Buffers some writers store beside the weights; they are recomputed, never read.
_BUFFERS = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


class CheckpointError(ValueError):
    """A checkpoint folder geomsim cannot read (one line, naming the file or tensor)."""


# --- the name table -------------------------------------------------------------------------

def _get(model, path: str):
    """`model.a.b[3].c` for the path "a.b.3.c"."""
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _decoder_layout(c: DecoderConfig) -> list[tuple[str, str, bool]]:
    """`(ours, theirs, transpose)`; "{i}" in theirs stands for every layer of a stacked leaf."""
    attn = [f"{p}_proj" for p in "qkvo"]
    mlp = ["gate_proj", "up_proj", "down_proj"]
    rows = [("embed_tokens.weight", "model.embed_tokens.weight", False), ("norm.weight", "model.norm.weight", False)]
    if not c.tie_embeddings:
        rows.append(("lm_head.weight", "lm_head.weight", False))
    layer = "model.layers.{i}."
    for name in attn:
        rows.append((f"layers.{name}.weight", f"{layer}self_attn.{name}.weight", False))
        if (c.o_bias if name == "o_proj" else c.qkv_bias):
            rows.append((f"layers.{name}.bias", f"{layer}self_attn.{name}.bias", False))
    for name in mlp:
        rows.append((f"layers.{name}.weight", f"{layer}mlp.{name}.weight", False))
        if c.mlp_bias:
            rows.append((f"layers.{name}.bias", f"{layer}mlp.{name}.bias", False))
    if c.qk_norm:
        rows += [(f"layers.{n}.weight", f"{layer}self_attn.{n}.weight", False) for n in ("q_norm", "k_norm")]
    # Llama's `post_attention_layernorm` is the MLP's input norm; Gemma 2/3's is the
    # attention branch's output norm, and `pre_feedforward_layernorm` feeds the MLP.
    norms = {"attn_in_norm": "input_layernorm"}
    if c.sandwich_norms:
        norms |= {"attn_out_norm": "post_attention_layernorm", "mlp_in_norm": "pre_feedforward_layernorm",
                  "mlp_out_norm": "post_feedforward_layernorm"}
    else:
        norms |= {"mlp_in_norm": "post_attention_layernorm"}
    rows += [(f"layers.{ours}.weight", f"{layer}{theirs}.weight", False) for ours, theirs in norms.items()]
    return rows


def _gpt2_layout(c: TransformerConfig) -> list[tuple[str, str, bool]]:
    # GPT-2's Conv1D stores weights as [in, out]: transposed against our (and torch Linear's) [out, in].
    rows = [("tok_emb.weight", "transformer.wte.weight", False), ("pos_emb.weight", "transformer.wpe.weight", False),
            ("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    pairs = [("ln1", "ln_1", False), ("ln2", "ln_2", False), ("attn.qkv", "attn.c_attn", True),
             ("attn.proj", "attn.c_proj", True), ("fc", "mlp.c_fc", True), ("out", "mlp.c_proj", True)]
    for i in range(c.depth):
        for ours, theirs, transpose in pairs:
            for leaf in ("weight", "bias"):
                rows.append((f"blocks.{i}.{ours}.{leaf}", f"transformer.h.{i}.{theirs}.{leaf}",
                             transpose and leaf == "weight"))
    return rows


def _layout(model) -> list[tuple[str, str, bool]]:
    if isinstance(model, DecoderLM):
        return _decoder_layout(model.config)
    if isinstance(model, Transformer):
        return _gpt2_layout(model.config)
    raise ValueError(f"model: expected a DecoderLM or a Transformer, got {type(model).__name__}")


def _names(theirs: str, num_layers: int) -> list[str]:
    return [theirs.format(i=i) for i in range(num_layers)] if "{i}" in theirs else [theirs]


# --- reading ----------------------------------------------------------------------------------

def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected a Hugging Face checkpoint folder)")
    if not file.exists():
        raise CheckpointError(f"{file}: missing (a Hugging Face checkpoint folder has config.json)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    if (folder / INDEX).exists():
        weight_map = json.loads((folder / INDEX).read_text()).get("weight_map", {})
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.exists():
                raise CheckpointError(f"{shard}: missing shard (listed in {INDEX})")
        return files
    if (folder / SINGLE).exists():
        return {name: folder / SINGLE for name in _open(folder / SINGLE).keys()}
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder}: holds only pickled PyTorch weights, which geomsim refuses to load (unpickling runs "
            "arbitrary code); convert them once where you trust the file: `AutoModelForCausalLM."
            "from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`")
    raise CheckpointError(f"{folder}: no {SINGLE} or {INDEX}")


def _open(file: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"{file}: truncated or not a safetensors file ({err})") from None


class _Reader:
    """Tensors by name over one or several files, each file opened once; `stored`
    maps a name to the one in the file where they differ."""

    def __init__(self, files: dict[str, Path], stored: dict[str, str] | None = None):
        self.files, self.handles, self.stored = files, {}, stored or {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"{name}: tensor missing from the checkpoint")
        file = self.files[name]
        if file not in self.handles:
            self.handles[file] = _open(file)
        try:
            return self.handles[file].get_tensor(self.stored.get(name, name))
        except Exception as err:
            raise CheckpointError(f"{file}: cannot read tensor {name}; truncated? ({err})") from None


def _skeleton(config: DecoderConfig | TransformerConfig, dtype, remat: bool = False):
    """The model's structure with `ShapeDtypeStruct` leaves (nothing allocated)."""
    if isinstance(config, DecoderConfig):
        return eqx.filter_eval_shape(lambda: DecoderLM(config, key=jax.random.key(0), dtype=dtype, remat=remat))
    return eqx.filter_eval_shape(lambda: Transformer(config, key=jax.random.key(0), dtype=dtype))


_DTYPES = {"F64": jnp.float64, "F32": jnp.float32, "BF16": jnp.bfloat16, "F16": jnp.float16}


def _checkpoint_dtype(files: dict[str, Path], read: _Reader):
    """The floating dtype of the checkpoint's tensors (read from a header, no data)."""
    name = min(files)
    file = files[name]
    read.handles.setdefault(file, _open(file))
    code = read.handles[file].get_slice(read.stored.get(name, name)).get_dtype()
    if code not in _DTYPES:
        raise CheckpointError(f"{name}: dtype {code} is not a float dtype geomsim loads ({', '.join(_DTYPES)})")
    return jnp.dtype(_DTYPES[code])


def with_tensors(model, tensors, dtype=None, *, unread_from=None):
    """`model` with every parameter taken from HF-named tensors (the inverse of
    `hf_tensors`): `tensors` is a dict or a function of the name.  Shapes are checked
    against the model's, naming the tensor; with `unread_from` (every name present),
    a tensor the layout does not know is an error.  Traceable: under `jit` the
    tensors may be traced arrays (a reparametrised model, e.g. LoRA)."""
    read = tensors if callable(tensors) else _DictReader(tensors)
    rows = _layout(model)
    n = _num_layers(model)
    arrays = []
    for ours, theirs, transpose in rows:
        expected = _get(model, ours)
        want = tuple(expected.shape[1:] if "{i}" in theirs else expected.shape)
        parts = []
        for name in _names(theirs, n):
            array = read(name)
            array = array.T if transpose else array
            if tuple(array.shape) != want:
                raise CheckpointError(f"{name}: shape {tuple(array.shape)} disagrees with config.json, which "
                                      f"implies {want}")
            parts.append(array)
        stacked = jnp.stack(parts) if "{i}" in theirs else jnp.asarray(parts[0])
        arrays.append(stacked.astype(dtype or expected.dtype))
    if unread_from is not None:
        known = {name for _, theirs, _ in rows for name in _names(theirs, n)}
        unread = sorted(k for k in unread_from if k not in known and not k.endswith(_BUFFERS)
                        and k != "lm_head.weight")  # a tied head some writers store anyway
        if unread:
            raise CheckpointError(f"{unread[0]}: tensor geomsim does not know for {model.config.__class__.__name__} "
                                  f"({len(unread)} such); the checkpoint is not the architecture its config names")
    getters = [(lambda m, p=ours: _get(m, p)) for ours, _, _ in rows]
    return eqx.tree_at(lambda m: [g(m) for g in getters], model, arrays)


class _DictReader:
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __call__(self, name: str) -> Array | np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"{name}: tensor missing")
        return self.tensors[name]


def _num_layers(model) -> int:
    return model.config.num_layers if isinstance(model, DecoderLM) else model.config.depth


def from_pretrained(path: str | os.PathLike, dtype=None, *, remat: bool = False) -> DecoderLM | Transformer:
    """Load a Hugging Face causal-LM folder.

    Args:
        path: folder with config.json and model.safetensors (or a sharded index).
        dtype: cast every weight to this dtype (e.g. jnp.float32); None keeps the
            checkpoint's own (bf16 stays bf16).
        remat: recompute each block in the backward pass (`DecoderLM` only).

    Raises:
        UnsupportedConfig: an architecture or config key geomsim would compute differently.
        CheckpointError: a missing file, shard or tensor, a tensor whose shape disagrees
            with the config (named), an unreadable shard, or pickled weights only.
    """
    folder = Path(path)
    config = parse_config(_read_config(folder))
    files = _tensor_files(folder)
    stored = {}
    if isinstance(config, TransformerConfig):
        # The original GPT-2 checkpoints store the base model's tensors without the
        # `transformer.` prefix (`wte.weight`, `h.0...`); transformers accepts both.
        canonical = {k: k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}" for k in files}
        stored = {c: k for k, c in canonical.items() if c != k}
        files = {canonical[k]: f for k, f in files.items()}
    read = _Reader(files, stored)
    dtype = jnp.dtype(dtype) if dtype is not None else _checkpoint_dtype(files, read)
    return with_tensors(_skeleton(config, dtype, remat), read, dtype, unread_from=files)


# --- writing ----------------------------------------------------------------------------------

def hf_config(model: DecoderLM | Transformer, dtype) -> dict:
    """The config.json of a model (a DecoderLM's is the one it was built from)."""
    dtype_name = jnp.dtype(dtype).name
    if isinstance(model, DecoderLM):
        raw = thaw(model.config.hf_config)
        if not raw:
            raise ValueError("model: its DecoderConfig holds no config.json (build configs with parse_config)")
        raw = {k: v for k, v in raw.items() if k != "torch_dtype"}
        return raw | {"dtype": dtype_name}
    c = model.config
    if not c.tie_embeddings:
        raise ValueError("model: GPT2LMHeadModel ties its head to the token embedding (tie_embeddings=True)")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.seq_len, "n_embd": c.width, "n_layer": c.depth, "n_head": c.num_heads,
            "n_inner": c.mlp_ratio * c.width, "layer_norm_epsilon": c.layer_norm_eps,
            "activation_function": {"gelu": "gelu", "gelu_tanh": "gelu_new"}[c.activation],
            "tie_word_embeddings": True, "dtype": dtype_name}


def _atomic_write(file: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hf_tensors(model) -> dict[str, np.ndarray]:
    """Every parameter of `model` (or of a pytree shaped like it, e.g. its gradient)
    as numpy arrays under transformers' tensor names and layouts."""
    n = _num_layers(model)
    tensors = {}
    for ours, theirs, transpose in _layout(model):
        array = np.asarray(_get(model, ours))
        for i, name in enumerate(_names(theirs, n)):
            part = array[i] if "{i}" in theirs else array
            tensors[name] = np.ascontiguousarray(part.T if transpose else part)
    return tensors


def transposed_names(model) -> set[str]:
    """The HF names of the tensors stored `[in, out]` (GPT-2's Conv1D), against the
    `[out, in]` of torch's Linear."""
    n = _num_layers(model)
    return {name for _, theirs, transpose in _layout(model) if transpose for name in _names(theirs, n)}


def save_pretrained(model: DecoderLM | Transformer, path: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` that transformers'
    `AutoModelForCausalLM.from_pretrained(path)` loads back (each file atomically)."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(model)
    dtype = next(iter(tensors.values())).dtype
    config = hf_config(model, dtype)
    _atomic_write(folder / SINGLE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


__all__ = ["CheckpointError", "from_pretrained", "hf_config", "hf_tensors", "save_pretrained", "transposed_names",
           "with_tensors"]
