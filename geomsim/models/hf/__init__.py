"""Hugging Face causal-LM checkpoints as equinox models.

`from_pretrained(folder)` gives a `DecoderLM` (Llama, Qwen2, Qwen3, Gemma 1/2/3)
or a `geomsim.models.Transformer` (GPT-2) whose `model(input_ids)` returns
next-token logits; `save_pretrained(model, folder)` writes a folder transformers
loads back.  Parity with transformers (logits, loss gradient, Hessian-vector
product) is tested per architecture on tiny checkpoints with every parameter
perturbed (tests/test_hf_models.py).
"""

from geomsim.models.hf.checkpoint import (
    CheckpointError,
    from_pretrained,
    hf_config,
    hf_tensors,
    save_pretrained,
    transposed_names,
    with_tensors,
)
from geomsim.models.hf.config import ARCHITECTURES, DecoderConfig, UnsupportedConfig, parse_config
from geomsim.models.hf.decoder import DecoderLM

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "DecoderConfig",
    "DecoderLM",
    "UnsupportedConfig",
    "from_pretrained",
    "hf_config",
    "hf_tensors",
    "parse_config",
    "save_pretrained",
    "transposed_names",
    "with_tensors",
]
