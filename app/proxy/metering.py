"""The router's own token counts, with each model's tokenizer: the bill never takes a host's word for it.

A model's tokenizer lives at ``TOKENIZERS_DIR/<model id>/tokenizer.json``,
with ``tokenizer_config.json`` beside it for the chat template. Chat prompts
are rendered with that template exactly as the engine renders them. A model
without tokenizer files is counted by an estimate (about four bytes a token)
and the usage record says so through the host's count beside it.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

BYTES_PER_TOKEN_ESTIMATE = 4
TOKENS_PER_MESSAGE_ESTIMATE = 4


def _raise(message: str):
    raise TemplateError(message)


def _text_of(content) -> str:
    """Message content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@dataclass
class ModelTokenizer:
    tokenizer: Tokenizer | None
    chat_template: object | None  # a compiled jinja template
    bos_token: str
    eos_token: str

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is None:
            return -(-len(text.encode()) // BYTES_PER_TOKEN_ESTIMATE)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_prompt(self, prompt: str) -> int:
        """A completions prompt, with the special tokens the engine adds."""
        if self.tokenizer is None:
            return self.count_text(prompt) + 1
        return len(self.tokenizer.encode(prompt, add_special_tokens=True).ids)

    def count_chat(self, messages: list[dict], tools: list | None = None) -> int:
        if self.tokenizer is None or self.chat_template is None:
            return sum(self.count_text(_text_of(m.get("content"))) + TOKENS_PER_MESSAGE_ESTIMATE for m in messages)
        rendered = self.chat_template.render(messages=messages, tools=tools, add_generation_prompt=True,
                                             bos_token=self.bos_token, eos_token=self.eos_token)
        return len(self.tokenizer.encode(rendered, add_special_tokens=False).ids)


def _special(config: dict, name: str) -> str:
    value = config.get(name) or ""
    return value.get("content", "") if isinstance(value, dict) else value


class Meter:
    """Tokenizers by model id, loaded once per process."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._models: dict[str, ModelTokenizer] = {}
        self._lock = threading.Lock()
        # The same environment Hugging Face chat templates are written for.
        self._jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        self._jinja.globals["raise_exception"] = _raise
        self._jinja.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    def forget(self) -> None:
        """Load tokenizers afresh on next use (after a model's files were installed or replaced)."""
        with self._lock:
            self._models.clear()

    def for_model(self, model_id: str) -> ModelTokenizer:
        found = self._models.get(model_id)
        if found is None:
            with self._lock:
                found = self._models.get(model_id) or self._load(model_id)
                self._models[model_id] = found
        return found

    def _load(self, model_id: str) -> ModelTokenizer:
        folder = self.directory / model_id
        if not (folder / "tokenizer.json").is_file():
            log.warning("no tokenizer for %s in %s: counting tokens by estimate", model_id, folder)
            return ModelTokenizer(None, None, "", "")
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        compiled = self._jinja.from_string(template) if template else None
        return ModelTokenizer(tokenizer, compiled, _special(config, "bos_token"), _special(config, "eos_token"))
