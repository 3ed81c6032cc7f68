"""The testbed's models: a protocol and a registry, so a model is one entry and a flag.

A `TestbedModel` turns the language and the config into the model's shape
(`shape`), a module to read the apply function from (`skeleton`) and fresh
weights (`build`).  Everything downstream (stages, diagnostics, fine-tunes, the
sweep) uses only `apply_fn(params, tokens) -> logits (batch, seq, vocab)` and the
params pytree, so any causal language model fits:

    transformer   geomsim.models.Transformer (the testbed's own decoder)
    llama         geomsim.models.hf.DecoderLM in the Llama architecture (RMSNorm,
                  rotary positions, SwiGLU, grouped key/value heads), the model
                  `geomsim.testbed.hf_export` writes as a Hugging Face folder

`TestbedConfig.model` (`--model`) picks the entry; width, depth and heads come
from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax

from geomsim.models.lora import default_targets, stacked_targets
from geomsim.tasks import Language


@dataclass(frozen=True)
class TestbedModel:
    """One model of the registry.

    shape: `(language, config) -> model config` (static).
    build: `(model config, key, dtype) -> equinox module` (weights from `key`).
    abstract_skeleton: build the module whose structure gives the apply function
        abstractly (`eqx.filter_eval_shape`: shapes, no arrays, so no eager
        initialiser ops each compiled as a program of its own).
    taylor_method: how the diagnostics take the exact Taylor coefficients
        (`geomsim.theory.align_coefficients`): "jet" (Taylor mode) or "jvp" (nested
        jvps) for a model that `jax.experimental.jet` cannot trace.
    lora_targets: `(path, leaf) -> bool`, the matrices the LoRA fine-tune adapts
        (`geomsim.models.lora`).
    """

    shape: Callable[[Language, Any], Any]
    build: Callable[..., eqx.Module]
    abstract_skeleton: bool = True
    taylor_method: str = "jet"
    lora_targets: Callable[[tuple, Any], bool] = default_targets

    __test__ = False  # not a pytest test class, despite the name

    def skeleton(self, model_config: Any) -> eqx.Module:
        key = jax.random.key(0)
        if self.abstract_skeleton:
            return eqx.filter_eval_shape(self.build, model_config, key, None)
        return self.build(model_config, key, None)


def _transformer_shape(lang: Language, config) -> Any:
    from geomsim.models import TransformerConfig

    return TransformerConfig(vocab_size=lang.vocab_size, seq_len=lang.seq_len - 1, width=config.width,
                             depth=config.depth, num_heads=config.heads)


def _transformer(model_config, key, dtype):
    from geomsim.models import Transformer

    return Transformer(model_config, key=key, dtype=dtype)


def _llama_shape(lang: Language, config) -> Any:
    from geomsim.models.hf import parse_config
    from geomsim.models.hf.tiny import llama_config

    kv = 2 if config.heads % 2 == 0 else 1  # grouped key/value heads where they divide
    return parse_config(llama_config(lang.vocab_size, config.width, config.depth, config.heads, kv,
                                     3 * config.width, max_positions=lang.seq_len))


def _llama(model_config, key, dtype):
    from geomsim.models.hf import DecoderLM

    return DecoderLM(model_config, key=key, dtype=dtype)


# The Llama skeleton is built concretely: its export (`hf_export`) recombines the trained
# weights with the skeleton's static part, which must hold no abstract arrays.  DecoderLM
# scans its stacked layers (`lax.scan`), which jet has no rule for (KeyError: scan): its
# Taylor coefficients come from nested jvps.
MODELS: dict[str, TestbedModel] = {
    "transformer": TestbedModel(_transformer_shape, _transformer),
    "llama": TestbedModel(_llama_shape, _llama, abstract_skeleton=False, taylor_method="jvp",
                          lora_targets=stacked_targets),
}
