"""Random-weight Llama-architecture checkpoints with a tokenizer, made offline.

No weights can be downloaded in tests, CI or benchmarks, so the folders they use
are made here: `llama_config(...)` is the config.json of a Llama model of any
shape, and `tiny_checkpoint(folder)` writes a complete Hugging Face folder
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a
chat template) that transformers loads as it is.

    python -m geomsim.models.hf.tiny OUT_DIR [--texts FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from geomsim.models.hf.checkpoint import save_pretrained
from geomsim.models.hf.config import parse_config
from geomsim.models.hf.decoder import DecoderLM

SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# One line per turn, so that rendering the first i turns is a prefix of rendering all of them.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def llama_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 intermediate_size: int, *, head_dim: int | None = None, max_positions: int = 2048,
                 tie: bool = False, **token_ids) -> dict:
    """The config.json of a LlamaForCausalLM of this shape (transformers 5's schema)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
            "head_dim": head_dim or hidden_size // num_heads, "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "tie_word_embeddings": tie,
            "dtype": "float32", **token_ids}


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE with the chat specials (any UTF-8 round-trips)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _texts(files: list[Path]) -> list[str]:
    texts = []
    for file in files:
        for line in file.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                texts += [m["content"] for m in record.get("messages", [])]
                texts += [record[k] for k in ("prompt", "response") if k in record]
    return texts or ["hello world"]


def tiny_checkpoint(folder, *, texts: list[Path] = (), vocab_size: int = 320, hidden_size: int = 32,
                    num_layers: int = 2, seed: int = 0, model: DecoderLM | None = None) -> Path:
    """Write a complete HF folder: a random (or the given) Llama model and a BPE
    tokenizer trained on the records of `texts` (JSONL files), with a chat template."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(_texts([Path(t) for t in texts]), vocab_size)
    ids = {name: tok.token_to_id(tok_name) for name, tok_name in
           (("pad_token_id", "<|pad|>"), ("bos_token_id", "<|bos|>"), ("eos_token_id", "<|end|>"))}
    if model is None:
        config = parse_config(llama_config(vocab_size, hidden_size, num_layers, 4, 2, 2 * hidden_size,
                                           max_positions=512, **ids))
        model = DecoderLM(config, key=jax.random.key(seed))
    save_pretrained(model, folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|end|>",
        "pad_token": "<|pad|>", "chat_template": CHAT_TEMPLATE, "model_max_length": 512}, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geomsim.models.hf.tiny",
                                     description="Write a tiny random-weight Llama checkpoint folder with a tokenizer.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--texts", nargs="*", default=[], help="JSONL files whose text trains the tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the weights (>= 0)")
    args = parser.parse_args(argv)
    print(tiny_checkpoint(args.out, texts=args.texts, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
