"""Dishonest hosts built on real engines: an HTTP server on loopback in front of a real vLLM engine, which it
asks for whole answers and bends before answering the router (as one JSON body or as a stream, as asked).

- ``honest``: passes every answer on as it is (a host in front of another engine: ``switch_to`` turns it);
- ``replay``: answers every request after its first with an answer it gave before, to another prompt (a host
  that serves cached text instead of running the model);
- ``truncate``: generates a third of the tokens asked for and says the model stopped there by itself, with an
  end-of-sequence token after them (a host that saves compute by cutting answers short).
"""
from __future__ import annotations

import json
import threading

import urllib3
from werkzeug.wrappers import Request, Response

from .fakehost import LoopbackHost

MODES = ("honest", "replay", "truncate")
_pool = urllib3.PoolManager(maxsize=16, retries=False)


class Cheater(LoopbackHost):
    def __init__(self, engine_url: str, mode: str, *, eos_token_id: int):
        assert mode in MODES
        self.engine_url, self.mode, self.eos = engine_url.rstrip("/"), mode, eos_token_id
        self.answers: list[dict] = []
        self.lock = threading.Lock()
        super().__init__()

    def switch_to(self, engine_url: str) -> None:
        """From now on, answers come from another engine."""
        self.engine_url = engine_url.rstrip("/")

    def wsgi(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST":
            upstream = _pool.request("GET", self.engine_url + request.path, timeout=30)
            return Response(upstream.data, status=upstream.status, mimetype="application/json")(environ, start_response)
        body = json.loads(request.get_data())
        stream = body.pop("stream", False)
        body.pop("stream_options", None)
        answer = self.answer(request.path, body)
        response = Response(_as_events(answer), mimetype="text/event-stream") if stream else \
            Response(json.dumps(answer), mimetype="application/json")
        return response(environ, start_response)

    def answer(self, path: str, body: dict) -> dict:
        if self.mode == "truncate" and body.get("max_tokens"):
            body = {**body, "max_tokens": max(1, body["max_tokens"] // 3)}
        with self.lock:
            cached = self.answers[-1] if self.mode == "replay" and self.answers else None
        if cached is not None:
            return cached
        upstream = _pool.request("POST", self.engine_url + path, body=json.dumps(body),
                                 headers={"Content-Type": "application/json"}, timeout=120)
        answer = json.loads(upstream.data)
        if self.mode == "truncate":
            for choice in answer.get("choices") or []:
                if choice.get("finish_reason") == "length":
                    choice["finish_reason"], choice["stop_reason"] = "stop", None
                    choice["token_ids"] = choice["token_ids"] + [self.eos]
        with self.lock:
            self.answers.append(answer)
        return answer


def _as_events(answer: dict):
    """A whole chat answer as vLLM streams it: one chunk with the text and the ids, a usage chunk, [DONE]."""
    choice = answer["choices"][0]
    message = choice["message"]
    chunk = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
             "model": answer["model"],
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": message.get("content") or ""},
                          "logprobs": None, "finish_reason": choice["finish_reason"],
                          "stop_reason": choice.get("stop_reason"), "token_ids": choice.get("token_ids")}]}
    usage = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
             "model": answer["model"], "choices": [], "usage": answer.get("usage")}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"
