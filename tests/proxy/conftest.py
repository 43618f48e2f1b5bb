"""Two real vLLM engines serving tiny-chat (CPU build), as approved hosts, and the official OpenAI SDK pointed at
the app: started once for every test that needs them."""
from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import UsageRecord

from ..support.engines import EMBEDDING_MODEL, start_minilm, start_tiny_chat
from ..support.factories import give_credits, make_host, make_key

MODEL = "gpushare/tiny-chat"


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """Two engines serving tiny-chat, started side by side."""
    running, model_dir = start_tiny_chat(tmp_path_factory.mktemp("engines"), count=2)
    try:
        yield running, model_dir
    finally:
        for engine in running:
            engine.stop()


@pytest.fixture
def hosts(app, engines, people):
    """Both engines as approved hosts; the router counts with tiny-chat's own tokenizer."""
    running, model_dir = engines
    link = app.config["TOKENIZERS_DIR"] + "/" + MODEL
    Path(link).parent.mkdir(parents=True, exist_ok=True)
    Path(link).symlink_to(model_dir, target_is_directory=True)
    meter = app.extensions["gateway"].meter if "gateway" in app.extensions else None
    if meter:
        meter.forget()
    ids = [make_host(people.bob, [MODEL], api_base=e.root_url, name=f"host{i}").id for i, e in enumerate(running)]
    try:
        yield ids
    finally:
        Path(link).unlink()
        if "gateway" in app.extensions:
            app.extensions["gateway"].meter.forget()


@pytest.fixture(scope="session")
def embedding_engine(tmp_path_factory):
    """An engine serving all-MiniLM-L6-v2 (vLLM's pooling runner)."""
    engine, model_dir = start_minilm(tmp_path_factory.mktemp("embeddings"))
    try:
        yield engine, model_dir
    finally:
        engine.stop()


@pytest.fixture
def embedding_host(app, embedding_engine, people):
    """The embedding engine as an approved host; the router counts with the model's own tokenizer."""
    engine, model_dir = embedding_engine
    link = Path(app.config["TOKENIZERS_DIR"]) / EMBEDDING_MODEL
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(model_dir, target_is_directory=True)
    try:
        yield make_host(people.bob, [EMBEDDING_MODEL], api_base=engine.root_url, name="embeddings").id
    finally:
        link.unlink()


@pytest.fixture
def engine_sdk(app, people, hosts):
    give_credits(people.alice, "5")
    _, secret = make_key(people.alice)
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gpushare.test")
    client = openai.OpenAI(base_url="http://gpushare.test/v1", api_key=secret, http_client=http, max_retries=0)
    yield client
    http.close()


def records():
    db.session.expire_all()
    return db.session.scalars(select(UsageRecord).order_by(UsageRecord.created_at)).all()


