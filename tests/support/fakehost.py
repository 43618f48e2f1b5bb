"""A host engine that misbehaves on request: a real HTTP server on loopback speaking the OpenAI wire format.

Real vLLM hosts cover what a good host does (tests/proxy/test_chat_vllm.py); this one
covers what a broken or dishonest host does. Every generated token is the
four bytes ``"tok "``, so the router's byte estimate counts exactly one token
per chunk.
"""
from __future__ import annotations

import json
import threading
import time

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

WORD = "tok "
# abort: what vLLM sends as it shuts down mid-request, a 200 whose choice ends with finish_reason "abort" after
# three tokens.
MODES = {"ok", "fail", "die_midstream", "stall", "stall_first", "garbage", "huge_line", "liar", "http400",
         "slow", "abort"}


class LoopbackHost:
    """A host's engine address on loopback, served by the subclass's ``wsgi`` on a thread while the ``with``
    lasts."""

    def __init__(self):
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class FakeHost(LoopbackHost):
    def __init__(self, mode: str = "ok", *, chunk_delay: float = 0.0):
        assert mode in MODES
        self.mode = mode
        self.chunk_delay = chunk_delay
        self.requests: list[dict] = []
        self.closed_early = threading.Event()
        super().__init__()

    def wsgi(self, environ, start_response):
        request = Request(environ)
        body = json.loads(request.get_data())
        self.requests.append(body)
        response = self.respond(body, chat=request.path.endswith("/chat/completions"))
        return response(environ, start_response)

    def respond(self, body: dict, *, chat: bool) -> Response:
        if self.mode == "fail":
            return Response("engine exploded", status=500)
        if self.mode == "http400":
            return Response(json.dumps({"object": "error", "message": "prompt too long for this engine",
                                        "type": "BadRequestError", "code": 400}), status=400,
                            mimetype="application/json")
        tokens = body.get("max_tokens") or 16
        text = WORD * tokens
        claimed = 100_000 if self.mode == "liar" else tokens
        usage = {"prompt_tokens": 7, "completion_tokens": claimed, "total_tokens": 7 + claimed}
        if not body.get("stream"):
            if self.mode == "garbage":
                return Response("<html>not json</html>", mimetype="application/json")
            if self.mode in ("stall", "stall_first"):
                time.sleep(30)
            finish = "length"
            if self.mode == "abort":
                text, finish = WORD * 3, "abort"
            choice = ({"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": [],
                                                "reasoning_content": None}, "logprobs": None,
                       "finish_reason": finish, "stop_reason": None} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None})
            return Response(json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                        "created": 1, "model": body["model"], "choices": [choice],
                                        "usage": usage, "service_tier": None, "system_fingerprint": None,
                                        "prompt_logprobs": None, "kv_transfer_params": None}),
                            mimetype="application/json")
        return Response(self.stream(body, tokens, usage, chat=chat), mimetype="text/event-stream")

    def stream(self, body: dict, tokens: int, usage: dict, *, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices, **extra):
            payload = {"id": "x", "object": obj, "created": 1, "model": body["model"], "choices": choices, **extra}
            return f"data: {json.dumps(payload)}\n\n"

        try:
            if self.mode == "stall_first":
                time.sleep(30)
            if chat:
                yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            for i in range(tokens):
                if self.chunk_delay:
                    time.sleep(self.chunk_delay)
                if self.mode == "die_midstream" and i == 3:
                    return
                if self.mode == "stall" and i == 3:
                    time.sleep(30)
                if self.mode == "garbage" and i == 3:
                    yield "data: {this is not json\n\n"
                if self.mode == "huge_line" and i == 3:
                    yield "data: " + "x" * (10 * 1024 * 1024) + "\n\n"
                if self.mode == "abort" and i == 3:
                    yield event([{"index": 0, **({"delta": {}} if chat else {"text": ""}), "logprobs": None,
                                  "finish_reason": "abort", "stop_reason": None}])
                    break
                last = i == tokens - 1
                if chat:
                    yield event([{"index": 0, "delta": {"content": WORD}, "logprobs": None,
                                  "finish_reason": "length" if last else None, "stop_reason": None}])
                else:
                    yield event([{"index": 0, "text": WORD, "logprobs": None,
                                  "finish_reason": "length" if last else None, "stop_reason": None}])
            if (body.get("stream_options") or {}).get("include_usage"):
                yield event([], usage=usage)
            yield "data: [DONE]\n\n"
        except GeneratorExit:
            self.closed_early.set()
            raise
