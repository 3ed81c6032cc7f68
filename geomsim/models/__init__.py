"""Small reference models for the curvature engine and the testbeds.

`MLP` and `Transformer` are equinox modules whose layers accept any leading
batch axes; `as_functional` turns them (or a flax model) into the pure
`(apply_fn, params)` pair the curvature operators take.  Hugging Face
checkpoints (Llama, Qwen2/3, Gemma 1/2/3, GPT-2) load with `from_pretrained`
and save with `save_pretrained` (`geomsim.models.hf`).  The flax twins live in
`geomsim.models.flax_twins` (imported on demand: flax is a test dependency).
"""

from geomsim.models.functional import as_functional
from geomsim.models.hf import DecoderConfig, DecoderLM, from_pretrained, save_pretrained
from geomsim.models.layers import Embedding, LayerNorm, Linear
from geomsim.models.losses import cross_entropy, next_token_batch, squared_error, token_nll
from geomsim.models.mlp import ACTIVATIONS, MLP
from geomsim.models.transformer import Transformer, TransformerConfig, causal_attention, num_parameters

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "DecoderConfig",
    "DecoderLM",
    "Embedding",
    "LayerNorm",
    "Linear",
    "Transformer",
    "TransformerConfig",
    "as_functional",
    "causal_attention",
    "cross_entropy",
    "from_pretrained",
    "next_token_batch",
    "num_parameters",
    "save_pretrained",
    "squared_error",
    "token_nll",
]
