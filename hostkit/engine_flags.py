"""vLLM's flags for what a model needs beyond its weights: the parsers the catalog names for it (the router sends
them in the host's state). Shared by the engines an agent runs: the Docker container on GPU hosts and the local
process (``hostkit.local.engine``)."""
from __future__ import annotations


def parser_args(tool_call_parser: str | None, reasoning_parser: str | None) -> list[str]:
    """vLLM's flags for a model's parsers: tool calling on (``tool_choice`` auto, required or a named function)
    where the model has a tool-call parser, its reasoning split out where it has a reasoning parser."""
    args = []
    if tool_call_parser:
        # Arguments follow each tool's JSON Schema, as if every tool were ``strict``: what an agent sends on to its
        # function parses, whatever the model.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser,
                 "--tool-strict-level", "parameter"]
    if reasoning_parser:
        args += ["--reasoning-parser", reasoning_parser]
    return args


def parser_settings(settings) -> dict:
    """A model's parser names as the router sends them (``{"tool_call_parser": ..., "reasoning_parser": ...}``),
    as keyword arguments for ``Engine``: anything else is dropped."""
    settings = settings if isinstance(settings, dict) else {}
    return {name: settings.get(name) if isinstance(settings.get(name), str) else None
            for name in ("tool_call_parser", "reasoning_parser")}
