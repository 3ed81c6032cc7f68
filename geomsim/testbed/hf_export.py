"""The testbed's aligned language model as a Hugging Face checkpoint (Llama architecture).

Pretrains and aligns a `LlamaForCausalLM`-shaped `DecoderLM` on the testbed's
synthetic language (the same stages, data and losses as the testbed's own
transformer), then writes what a safety team would hand to `geomsim.diagnose
--hf`: the checkpoint folder with a word-level tokenizer over the language's
token names, `align.jsonl` (held-out harmful prompts, each answered `REFUSE`) and
`task.jsonl` (a benign fine-tuning task's training set).  The JSONL losses are
the testbed's own `L_A` (refusal loss) and `L_F` (answer loss) by construction,
so diagnosing the folder reproduces the in-memory diagnosis of the same weights
(tests/test_hf_data.py).

    python -m geomsim.testbed.hf_export --out runs/testbed-llama [--pretrain-steps 600 --align-steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from geomsim.models.hf import DecoderLM, save_pretrained
from geomsim.tasks import Batch, Language
from geomsim.testbed.config import TestbedConfig
from geomsim.testbed.models import MODELS
from geomsim.testbed.stages import Testbed, align, build, evaluate, init_params, pretrain


def train_llama(config: TestbedConfig) -> tuple[Testbed, DecoderLM, dict]:
    """Pretrain and align seed 0's model of the testbed's `llama` entry
    (`geomsim.testbed.models`); the per-stage evaluation on the side."""
    bed = build(dataclasses.replace(config, seeds=1, model="llama"))
    skeleton = MODELS["llama"].skeleton(bed.model_config)
    params, _ = pretrain(bed, init_params(bed))
    params, _ = align(bed, params)
    metrics = {k: float(v[0]) for k, v in evaluate(bed, params).items()}
    _, static = eqx.partition(skeleton, eqx.is_inexact_array)
    return bed, eqx.combine(jax.tree.map(lambda x: x[0], params), static), metrics


def word_tokenizer(lang: Language):
    """A word-level tokenizer whose ids are the language's token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {lang.token_name(i): i for i in range(lang.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="PAD"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def records(lang: Language, batch: Batch, *, refuse: bool) -> list[dict]:
    """Prompt/response records of a batch: the prompt up to SEP, and either REFUSE or
    the answer tokens that carry loss."""
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.answer_mask)
    names = [lang.token_name(i) for i in range(lang.vocab_size)]
    out = []
    for row, row_mask in zip(tokens, mask, strict=True):
        prompt = " ".join(names[t] for t in row[: lang.answer_start])
        answer = "REFUSE" if refuse else " ".join(names[t] for t, m in zip(row, row_mask, strict=True) if m)
        out.append({"prompt": prompt, "response": answer})
    return out


def export(bed: Testbed, model: DecoderLM, out, task: str, dtype=jnp.float32) -> Path:
    """Write the folder (weights in `dtype`, config, tokenizer) and its align/task JSONL files."""
    out = Path(out)
    save_pretrained(jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model), out)
    word_tokenizer(bed.lang).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "PAD", "model_max_length": bed.lang.seq_len},
        indent=2) + "\n")
    for name, rows in (("align", records(bed.lang, bed.harm_eval, refuse=True)),
                       ("task", records(bed.lang, bed.task_train[task], refuse=False))):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geomsim.testbed.hf_export", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--task", default="sort", help="the benign fine-tuning task of task.jsonl (default sort)")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="AdamW pretraining steps (>= 1)")
    parser.add_argument("--align-steps", type=int, default=300, help="AdamW alignment steps (>= 1)")
    parser.add_argument("--eval-size", type=int, default=64, help="harmful prompts in align.jsonl (>= 1)")
    parser.add_argument("--finetune-size", type=int, default=64, help="examples in task.jsonl (>= 1)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    config = TestbedConfig(pretrain_steps=args.pretrain_steps, align_steps=args.align_steps,
                           eval_size=args.eval_size, finetune_size=args.finetune_size, finetune_tasks=(args.task,))
    t0 = time.perf_counter()
    bed, model, metrics = train_llama(config)
    folder = export(bed, model, args.out, args.task)
    print(json.dumps({"out": str(folder), "train_seconds": round(time.perf_counter() - t0, 1), **metrics}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
