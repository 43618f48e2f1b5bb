"""A load generator: ``concurrency`` gevent clients send ``requests`` requests, and it prints JSON timings.

    python bench/load.py URL KEY MODEL --concurrency 16 --requests 400 [--stream]
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import urllib3  # noqa: E402
from gevent.pool import Pool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=50)
    args = parser.parse_args()
    http = urllib3.PoolManager(maxsize=args.concurrency, block=True, retries=False,
                               timeout=urllib3.Timeout(connect=5, read=120))
    body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": "Say something."}],
                       "max_tokens": args.max_tokens, "stream": args.stream}).encode()
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
    latencies, ttfts, failures = [], [], []

    def one(_):
        start = time.perf_counter()
        try:
            response = http.urlopen("POST", args.url, body=body, headers=headers, preload_content=False)
            first, tail = None, b""
            for chunk in iter(lambda: response.read1(4096), b""):
                if first is None:
                    first = time.perf_counter()
                tail = (tail + chunk)[-512:]
            response.release_conn()
            if response.status != 200:
                failures.append(response.status)
                return
            if args.stream and (b'{"error"' in tail or not tail.rstrip().endswith(b"data: [DONE]")):
                failures.append("stream error event" if b'{"error"' in tail else "stream without [DONE]")
                return
            done = time.perf_counter()
            latencies.append(done - start)
            ttfts.append((first or done) - start)
        except Exception as exc:  # a failed request is counted, not fatal
            failures.append(type(exc).__name__)

    started = time.perf_counter()
    pool = Pool(args.concurrency)
    for i in range(args.requests):
        pool.spawn(one, i)
    pool.join()
    elapsed = time.perf_counter() - started
    gevent.sleep(0)
    print(json.dumps({"elapsed": elapsed, "latencies": latencies, "ttfts": ttfts, "failures": failures}))


if __name__ == "__main__":
    main()
