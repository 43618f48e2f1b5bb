"""Real vLLM engines serving tiny-chat for the tests: a missing engine virtualenv fails, never skips."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hostkit.local.engine import Engine, EngineError, engine_python, ensure_model
from hostkit.local.models import TOOL_CALL_PARSERS

MODEL = "gpushare/tiny-chat"


def start_all(engines: list[Engine]) -> list[str]:
    """Start the engines side by side; what went wrong with each that did not start."""
    failures: list[str] = []

    def start(engine: Engine) -> None:
        try:
            engine.start()
        except EngineError as exc:
            failures.append(str(exc))

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def start_tiny_chat(data_dir: Path, count: int = 1) -> tuple[list[Engine], Path]:
    """``count`` started engines (side by side) and the model folder they serve."""
    try:
        python = engine_python()
    except EngineError as exc:
        pytest.fail(f"these tests need vLLM: {exc}", pytrace=False)
    model_dir = ensure_model("tiny-chat", data_dir / "models", python=python, data_dir=data_dir)
    engines = [Engine(python, model_dir, MODEL, data_dir=data_dir / f"engine{i}",
                      tool_call_parser=TOOL_CALL_PARSERS["tiny-chat"],
                      # The prompt-parity tests render other models' templates on these engines (/tokenize).
                      extra_args=("--trust-request-chat-template",)) for i in range(count)]
    failures = start_all(engines)
    if failures:
        for engine in engines:
            engine.stop()
        pytest.fail("\n".join(failures), pytrace=False)
    return engines, model_dir


EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def start_minilm(data_dir: Path) -> tuple[Engine, Path]:
    """A started engine serving all-MiniLM-L6-v2 with vLLM's pooling runner, and its model folder."""
    try:
        python = engine_python()
    except EngineError as exc:
        pytest.fail(f"these tests need vLLM: {exc}", pytrace=False)
    model_dir = ensure_model("minilm", data_dir / "models", python=python, data_dir=data_dir)
    engine = Engine(python, model_dir, EMBEDDING_MODEL, data_dir=data_dir / "engine", max_model_len=256,
                    runner="pooling")
    try:
        engine.start()
    except EngineError as exc:
        engine.stop()
        pytest.fail(str(exc), pytrace=False)
    return engine, model_dir
