"""A fast local OpenAI-compatible upstream for measuring the router's own overhead.

    python bench/upstream.py PORT [--chunks 50] [--gap-ms 0] [--unix PATH]

Non-streamed requests get a fixed small body at once; streamed requests get
``--chunks`` content chunks, ``--gap-ms`` apart, then a usage chunk and [DONE].
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402


def make_app(chunks: int, gap: float):
    def app(environ, start_response):
        body = json.loads(environ["wsgi.input"].read() or b"{}")
        chat = environ["PATH_INFO"].endswith("/chat/completions")
        if environ["PATH_INFO"].endswith("/models"):
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"object":"list","data":[]}']
        n = min(body.get("max_tokens") or chunks, chunks)
        usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "tok " * n}
            choice = {"index": 0, "message": message, "finish_reason": "length", "logprobs": None}
            payload = json.dumps({"id": "b", "object": "chat.completion", "created": 1, "model": body.get("model"),
                                  "choices": [choice], "usage": usage}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
            return [payload]
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            head = {"id": "b", "object": "chat.completion.chunk", "created": 1, "model": body.get("model")}
            for i in range(n):
                if gap:
                    gevent.sleep(gap)
                delta = {"content": "tok "} if chat else None
                choice = ({"index": 0, "delta": delta, "finish_reason": "length" if i == n - 1 else None}
                          if chat else {"index": 0, "text": "tok ", "finish_reason": None})
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        return events()
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=0)
    parser.add_argument("--unix", default=None, help="listen on this Unix socket instead (as a contained engine)")
    args = parser.parse_args()
    if args.unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.unix)
    else:
        # TCP_NODELAY on the listener is inherited by every accepted socket: without it, Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every response sent in more than one write.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    WSGIServer(listener, make_app(args.chunks, args.gap_ms / 1000), log=None).serve_forever()


if __name__ == "__main__":
    main()
