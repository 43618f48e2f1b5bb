"""The router's own token counts, with each model's tokenizer: the bill never takes a host's word for it.

A model's tokenizer lives at ``TOKENIZERS_DIR/<model id>/tokenizer.json``,
with ``tokenizer_config.json`` beside it for the chat template. Chat prompts
are rendered with that template exactly as the engine renders them (vLLM
through Hugging Face's ``apply_chat_template``: the same Jinja environment,
``tojson`` filter, special tokens and arguments), from the conversation that
``messages.conversation`` builds. A model without tokenizer files is counted
by an estimate (about four bytes a token) and the usage record says so
through the host's count beside it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .messages import conversation

log = logging.getLogger(__name__)

BYTES_PER_TOKEN_ESTIMATE = 4
TOKENS_PER_MESSAGE_ESTIMATE = 4
# What a host's generated text may hold beyond what the client received, in characters without whitespace: the
# syntax around each tool call (``<tool_call>{"name": , "arguments": }</tool_call>`` and the like), and the
# end-of-sequence token or the last token's overshoot past a stop string.
TOOL_CALL_SCAFFOLD = 64
GENERATION_SLACK = 32
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# How Hugging Face marks the end of the message a template is to continue (``continue_final_message``).
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """Hugging Face's ``tojson``: plain ``json.dumps``, without Jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}`` (Hugging Face's assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _iterates_content(template) -> bool:
    """Whether a template loops over a message's content (it takes content as a list of parts, vLLM's "openai"
    format) rather than using it as one string."""
    for loop in template.find_all(nodes.For):
        target = loop.iter
        while isinstance(target, (nodes.Filter, nodes.Test)) or (
                isinstance(target, nodes.Getitem) and isinstance(target.arg, nodes.Slice)):
            target = target.node
        if isinstance(target, nodes.Name) and target.name == "content":
            return True
        if isinstance(target, nodes.Getattr) and target.attr == "content":
            return True
        if isinstance(target, nodes.Getitem) and isinstance(target.arg, nodes.Const) and target.arg.value == "content":
            return True
    return False


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
    special_tokens: dict[str, str] = field(default_factory=dict)
    string_content: bool = True  # the template takes content as a string (text parts joined), not a list
    developer_role: bool = False  # the template knows the developer role (else it becomes system)

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is None:
            return -(-len(text.encode()) // BYTES_PER_TOKEN_ESTIMATE)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_prompt(self, prompt: str) -> int:
        """A completions prompt, with the special tokens the engine adds."""
        ids = self.encode_prompt(prompt)
        return self.count_text(prompt) + 1 if ids is None else len(ids)

    def encode_prompt(self, prompt: str) -> list[int] | None:
        """A completions prompt's token ids as the engine makes them (None: no tokenizer, only an estimate)."""
        if self.tokenizer is None:
            return None
        return self.tokenizer.encode(prompt, add_special_tokens=True).ids

    def count_ids(self, token_ids: list[int]) -> int:
        """The router's count of text a host says it generated as these token ids: decoded (special tokens
        kept), then encoded again, so an id list that is not how the tokenizer writes its text counts for no more
        than the text."""
        return self.count_text(self.decode(token_ids))

    def decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def count_generated(self, token_ids, delivered: list[str], *, tool_calls: int = 0,
                        stop: str | None = None) -> int | None:
        """The router's count of one choice from the token ids its host says it generated, or None when those ids
        do not account for what the client received (the caller then counts the delivered text).

        The ids' text must hold every ``delivered`` piece (the content, each tool call's name and arguments; the
        engine's tool-call parser reformats them, so whitespace is not compared) and little else: the syntax
        around each tool call, a stop string and the end-of-sequence token. What it holds is counted by
        encoding it again, so the host's id list is never taken for the count itself."""
        if self.tokenizer is None or not isinstance(token_ids, list):
            return None
        vocabulary = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocabulary for i in token_ids):
            return None
        try:
            raw = self.decode(token_ids)
        except Exception:
            return None
        rest = _squeezed(raw)
        for piece in delivered:
            piece = _squeezed(piece)
            if not piece:
                continue
            at = rest.find(piece)
            if at < 0:
                return None
            rest = rest[:at] + rest[at + len(piece):]
        if len(rest) > TOOL_CALL_SCAFFOLD * tool_calls + len(_squeezed(stop or "")) + GENERATION_SLACK:
            return None
        return self.count_text(raw)

    def count_chat(self, messages: list[dict], tools: list | None = None, *, add_generation_prompt: bool = True,
                   continue_final_message: bool = False, template_kwargs: dict | None = None,
                   reasoning_effort: str | None = None) -> int:
        """The prompt of ``messages`` (rebuilt by ``messages.check_messages``) and ``tools`` (by ``check_tools``),
        as the engine renders and counts it."""
        ids = self.encode_chat(messages, tools, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, template_kwargs=template_kwargs,
                               reasoning_effort=reasoning_effort)
        if ids is None:
            return sum(self.count_text(_text_of(m.get("content"))) + TOKENS_PER_MESSAGE_ESTIMATE for m in messages)
        return len(ids)

    def encode_chat(self, messages: list[dict], tools: list | None = None, *, add_generation_prompt: bool = True,
                    continue_final_message: bool = False, template_kwargs: dict | None = None,
                    reasoning_effort: str | None = None) -> list[int] | None:
        """``count_chat``'s prompt as token ids (None: no tokenizer or template, only an estimate)."""
        if self.tokenizer is None or self.chat_template is None:
            return None
        chat = conversation(messages, string_format=self.string_content, developer_role=self.developer_role)
        kwargs = dict(template_kwargs or {})
        extra = {"add_generation_prompt": add_generation_prompt, "reasoning_effort": reasoning_effort}
        if reasoning_effort is not None and "enable_thinking" not in kwargs:
            extra["enable_thinking"] = reasoning_effort != "none"
        kwargs = {**self.special_tokens, **kwargs, **extra}
        final = None
        if continue_final_message:
            final = _mark_final(chat)
        rendered = self.chat_template.render(messages=chat, tools=tools, documents=None, **kwargs)
        if final is not None:
            rendered = _cut_at_mark(rendered, final)
        return self.tokenizer.encode(rendered, add_special_tokens=False).ids


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _mark_final(chat: list[dict]) -> str:
    """Mark the end of the last message's text, as Hugging Face does for ``continue_final_message``; returns that
    text."""
    last = chat[-1]
    content = last.get("content")
    if isinstance(content, list):
        for part in reversed(content):
            if "text" in part:
                final, part["text"] = part["text"], part["text"] + CONTINUE_TAG
                return final
        raise TemplateError("continue_final_message is set but the final message has no text to continue")
    if content is None:
        raise TemplateError("continue_final_message is set but the final message has no content")
    last["content"] = content + CONTINUE_TAG
    return content


def _cut_at_mark(rendered: str, final: str) -> str:
    """The prompt up to the mark: the template then continues the last message rather than closing it."""
    mark = CONTINUE_TAG.strip()
    if final.strip() not in rendered or mark not in rendered:
        raise TemplateError("the final message does not appear in the rendered prompt")
    at = rendered.rindex(mark)
    if rendered[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()


def _special(config: dict, name: str) -> str:
    value = config.get(name) or ""
    return value.get("content", "") if isinstance(value, dict) else value


class Meter:
    """Tokenizers by model id, loaded once per process, and again when a model's files are replaced (looked at
    every ``RECHECK_SECONDS``)."""

    RECHECK_SECONDS = 5.0

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._models: dict[str, ModelTokenizer] = {}
        self._checked: dict[str, tuple[float, tuple | None]] = {}  # model id -> (when, the files' identity)
        self._lock = threading.Lock()
        # The same environment Hugging Face chat templates are written for.
        self._jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=[_Generation, "jinja2.ext.loopcontrols"])
        self._jinja.filters["tojson"] = _tojson
        self._jinja.globals["raise_exception"] = _raise
        self._jinja.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    def forget(self) -> None:
        """Load tokenizers afresh on next use (after a model's files were installed or replaced)."""
        with self._lock:
            self._models.clear()
            self._checked.clear()

    def for_model(self, model_id: str) -> ModelTokenizer:
        found = self._models.get(model_id)
        checked_at, identity = self._checked.get(model_id, (0.0, None))
        if found is not None and time.monotonic() - checked_at > self.RECHECK_SECONDS:
            now_identity = self._identity(model_id)
            self._checked[model_id] = (time.monotonic(), now_identity)
            if now_identity != identity:
                found = None
        if found is None:
            with self._lock:
                identity = self._identity(model_id)
                found = self._load(model_id)
                self._models[model_id] = found
                self._checked[model_id] = (time.monotonic(), identity)
        return found

    def _identity(self, model_id: str) -> tuple | None:
        """Which files a model's tokenizer is read from: a rebuilt or re-linked folder reads as another."""
        try:
            stats = [(self.directory / model_id / name).stat() for name in ("tokenizer.json", "tokenizer_config.json")]
        except OSError:
            return None
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _load(self, model_id: str) -> ModelTokenizer:
        folder = self.directory / model_id
        if not (folder / "tokenizer.json").is_file():
            log.warning("no tokenizer for %s in %s: counting tokens by estimate", model_id, folder)
            return ModelTokenizer(None, None)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # A tokenizer.json may carry the padding and truncation its model was trained with; the engine counts a
        # prompt as it is.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if not template:
            return ModelTokenizer(tokenizer, None)
        return ModelTokenizer(tokenizer, self._jinja.from_string(template),
                              special_tokens={name: _special(config, name) for name in SPECIAL_TOKEN_NAMES
                                              if config.get(name)},
                              string_content=not _iterates_content(self._jinja.parse(template)),
                              developer_role="'developer'" in template or '"developer"' in template)
