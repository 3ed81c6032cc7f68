"""The tokenizer and chat template of a Hugging Face folder, without transformers.

`tokenizer.json` is read by `tokenizers`; the special tokens and the chat
template come from `tokenizer_config.json` (or `chat_template.jinja` /
`chat_template.json`, where transformers 5 writes it).  The template is rendered
with Jinja in a sandbox, with the helpers transformers gives templates
(`raise_exception`, `strftime_now`, `bos_token`, `eos_token`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from geomsim.models.hf.checkpoint import CheckpointError


def _token(value) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


@dataclasses.dataclass(frozen=True)
class HFTokenizer:
    """`encode(text) -> list[int]`, the special token ids and the chat template."""

    tokenizer: object  # tokenizers.Tokenizer
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    chat_template: str | None

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        """The padding id (pad, else eos, else 0): padded positions never reach a loss."""
        for token in (self.pad_token, self.eos_token):
            if self.token_id(token) is not None:
                return self.token_id(token)
        return 0

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`; `special` adds the tokenizer's own BOS/EOS post-processing."""
        return self.tokenizer.encode(text, add_special_tokens=special).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's character span in `text` (no special tokens added)."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        """The chat template applied to `messages` (`ValueError` without a template)."""
        if self.chat_template is None:
            raise ValueError("chat_template: this tokenizer has none (tokenizer_config.json); use prompt/response "
                             "records, which need no template")
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")


def _compile(source: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt):
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


def _chat_template(folder: Path, config: dict) -> str | None:
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").exists():
        config = json.loads((folder / "chat_template.json").read_text())
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default", next(iter(named.values()), None))
    return template


def load_tokenizer(path) -> HFTokenizer:
    """The tokenizer of an HF folder (`CheckpointError` naming a missing file)."""
    from tokenizers import Tokenizer

    folder = Path(path)
    file = folder / "tokenizer.json"
    if not file.exists():
        raise CheckpointError(f"{file}: missing (geomsim reads fast tokenizers; save one with "
                              "`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    return HFTokenizer(tokenizer=Tokenizer.from_file(str(file)), bos_token=_token(config.get("bos_token")),
                       eos_token=_token(config.get("eos_token")), pad_token=_token(config.get("pad_token")),
                       chat_template=_chat_template(folder, config))
