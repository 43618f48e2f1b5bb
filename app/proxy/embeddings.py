"""``POST /v1/embeddings``: what a request may hold, how its input is counted, and the answer rebuilt to OpenAI's
schema.

Embeddings go the path completions go (the key, rate limits, a hold, routing to a host serving the embedding model
with vLLM's pooling runner, settlement), with input tokens only: each input is counted with the model's own
tokenizer, special tokens included, as the engine counts it, and billed at the model's input price.
"""
from __future__ import annotations

import orjson

from ..echo import shown
from . import admission
from .admission import HONOURED, PASSED
from .errors import ApiError, invalid

PARAMETERS_TABLE = {
    "model": (HONOURED, "an embedding model (the catalog's kind); its price and its hosts"),
    "input": (HONOURED, "a string, an array of strings, or token ids; each counted with the model's tokenizer"),
    "encoding_format": (PASSED, "`float` or `base64`"),
    "dimensions": (PASSED, "to the engine, for models that can shorten their vectors"),
    "user": (HONOURED, "sticky routing, as on chat"),
}
SUPPORTED_PARAMETERS = tuple(sorted(PARAMETERS_TABLE))
MAX_INPUTS = 2048  # OpenAI's own limit
MAX_INPUT_CHARACTERS = 1_000_000  # all inputs together, before any tokenizer sees them



def check(body: dict) -> list:
    """The inputs, one per item: strings, or lists of token ids. Raises ApiError(400) naming the field."""
    if unknown := sorted(set(body) - set(PARAMETERS_TABLE)):
        raise invalid(f"Unrecognized request argument supplied: {shown(unknown[0], 64)}", shown(unknown[0], 64),
                      "unknown_parameter")
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(i, int) for i in value)):
        inputs = [value]
    elif isinstance(value, list) and value:
        inputs = value
    else:
        raise invalid("'input' must be a string, an array of strings, or token ids.", "input",
                      "missing_required_parameter" if value is None else "invalid_type")
    if len(inputs) > MAX_INPUTS:
        raise invalid(f"'input' has {len(inputs)} items; at most {MAX_INPUTS} are allowed.", "input",
                      "array_above_max_length")
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise invalid(f"'input[{i}]' is empty.", f"input[{i}]")
        elif not (isinstance(item, list) and item and all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in item)):
            raise invalid(f"'input[{i}]' must be a non-empty string or array of token ids.", f"input[{i}]",
                          "invalid_type")
    if sum(len(item) for item in inputs) > MAX_INPUT_CHARACTERS:
        raise invalid(f"'input' is longer than {MAX_INPUT_CHARACTERS} characters in all.", "input")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= 65536):
        raise invalid("'dimensions' must be a whole number from 1 to 65536.", "dimensions")
    if body.get("user") is not None and (not isinstance(body["user"], str) or len(body["user"]) > 512):
        raise invalid("'user' must be a string of at most 512 characters.", "user")
    return inputs


def parse(raw: bytes) -> admission.CompletionRequest:
    """An embeddings request, checked. It holds one token of output at the model's output price (nothing, for an
    embedding model): ``gs_hold`` grants at least one."""
    body = admission.parse_json(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > admission.MAX_MODEL_NAME:
        raise invalid("You must provide a model parameter.", "model", "missing_required_parameter")
    return admission.CompletionRequest(endpoint="embeddings", body=body, model=model, stream=False,
                                       include_usage=False, max_tokens=1, n=1, inputs=check(body),
                                       sticky=f"user:{body['user']}" if body.get("user") else None)


def count(tokenizer, inputs: list, context_length: int) -> list[int]:
    """Each input's tokens (``check``'s), as the engine counts them (special tokens included); an input longer than
    the model's context is refused, as the engine would refuse it."""
    counts = [len(item) if isinstance(item, list) else tokenizer.count_prompt(item) for item in inputs]
    for i, tokens in enumerate(counts):
        if tokens > context_length:
            raise ApiError(400, f"This model's maximum context length is {context_length} tokens, but 'input[{i}]' "
                                f"has {tokens}. Shorten or split it.", param=f"input[{i}]",
                           code="context_length_exceeded")
    return counts


def forward(body: dict, model: str) -> bytes:
    """The body the engine is sent."""
    sent = {"model": model, "input": body["input"]}
    for name in ("encoding_format", "dimensions"):
        if body.get(name) is not None:
            sent[name] = body[name]
    return orjson.dumps(sent)


def response(upstream: dict, *, model: str, counted: dict) -> dict | None:
    """OpenAI's embedding list, rebuilt from the engine's; None when it is not one (the host failed)."""
    data = upstream.get("data") if isinstance(upstream, dict) else None
    if not isinstance(data, list) or not data:
        return None
    rebuilt = []
    for i, item in enumerate(data):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not (isinstance(vector, str) or isinstance(vector, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector)):
            return None
        index = item.get("index", i)
        rebuilt.append({"object": "embedding", "index": index if isinstance(index, int) else i, "embedding": vector})
    return {"object": "list", "data": rebuilt, "model": model, "usage": counted}
