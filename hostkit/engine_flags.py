"""vLLM's flags for what a model needs beyond its weights: the parsers the catalog names for it (the router sends
them in the host's state), and the environment every engine runs in. Shared by the engines an agent runs: the
container (``hostkit.container``) and the local process (``hostkit.local.engine``)."""
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


def engine_variables(cache: str, config: str, *, offline: bool = True, vllm_cache: str | None = None) -> dict[str, str]:
    """The environment of an engine: every cache under ``cache`` (vLLM's own under ``vllm_cache`` where given) and
    configuration under ``config``, no usage statistics or telemetry, and (``offline``) no hub: the model is
    already on disk when vLLM starts."""
    env = {"XDG_CACHE_HOME": cache, "XDG_CONFIG_HOME": config, "HF_HOME": f"{cache}/huggingface",
           "VLLM_CACHE_ROOT": vllm_cache or f"{cache}/vllm", "VLLM_CONFIG_ROOT": f"{config}/vllm",
           "VLLM_ASSETS_CACHE": f"{cache}/vllm/assets", "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor",
           "TRITON_CACHE_DIR": f"{cache}/triton", "NUMBA_CACHE_DIR": f"{cache}/numba",
           "OUTLINES_CACHE_DIR": f"{cache}/outlines", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
           "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    if offline:
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return env
