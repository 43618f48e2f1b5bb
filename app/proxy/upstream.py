"""Talking to a host's engine: one urllib3 pool per process, and Server-Sent Events read line by line.

A read timeout in urllib3 bounds each wait on the socket, so the same
mechanism gives a first-token timeout (until the response starts, and until
the first event of a stream) and a between-chunks timeout after that.
"""
from __future__ import annotations

import socket

import orjson
import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from ..echo import shown

MAX_EVENT_BYTES = 1024 * 1024  # one SSE event larger than this is a broken host
MAX_BODY_BYTES = 16 * 1024 * 1024


class UpstreamError(Exception):
    """The host failed. ``before_first_byte`` says whether another host may still be tried."""

    def __init__(self, message: str, *, status: int = 502, before_first_byte: bool = True):
        super().__init__(message)
        self.status, self.before_first_byte = status, before_first_byte


class HostRefused(Exception):
    """The host answered the request with a 4xx: the request itself is wrong, another host won't help."""

    def __init__(self, status: int, body: bytes):
        super().__init__(status)
        self.status, self.body = status, body


class Upstream:
    def __init__(self, connect_timeout: float, first_token_timeout: float, chunk_timeout: float):
        self.pool = urllib3.PoolManager(num_pools=64, maxsize=64, block=False, retries=False)
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.chunk_timeout = chunk_timeout

    def open(self, url: str, body: bytes, *, stream: bool) -> urllib3.BaseHTTPResponse:
        """Send the request; return once the response starts. 4xx raises HostRefused, anything else UpstreamError."""
        try:
            response = self.pool.urlopen(
                "POST", url, body=body, headers={"Content-Type": "application/json", "Accept":
                                                 "text/event-stream" if stream else "application/json"},
                timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.first_token_timeout),
                preload_content=False, redirect=False, retries=False)
        except ReadTimeoutError:
            raise UpstreamError("the host did not answer in time", status=504) from None
        except (HTTPError, OSError) as exc:
            raise UpstreamError(f"could not reach the host: {type(exc).__name__}") from None
        if response.status >= 400:
            payload = self._read_small(response)
            if 400 <= response.status < 500 and response.status not in (408, 429):
                raise HostRefused(response.status, payload)
            raise UpstreamError(f"the host answered {response.status}")
        return response

    def _read_small(self, response) -> bytes:
        try:
            return response.read(64 * 1024)
        except (HTTPError, OSError):
            return b""
        finally:
            response.release_conn()

    def read_json(self, response) -> dict:
        """A whole non-streamed body as JSON."""
        try:
            body = response.read(MAX_BODY_BYTES + 1)
        except ReadTimeoutError:
            raise UpstreamError("the host stopped answering", status=504) from None
        except (HTTPError, OSError):
            raise UpstreamError("the host closed the connection") from None
        finally:
            response.release_conn()
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamError("the host sent a response larger than allowed")
        try:
            data = orjson.loads(body)
        except ValueError:
            raise UpstreamError("the host sent a response that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError("the host sent a response of the wrong shape")
        return data

    def events(self, response):
        """Yield each SSE ``data:`` payload as bytes until ``[DONE]``; the first wait uses the first-token
        timeout and every later wait the between-chunks timeout. Raises UpstreamError on a broken stream."""
        buffer = b""
        first = True
        finished = False
        try:
            while True:
                try:
                    chunk = response.read1(65536)
                except ReadTimeoutError:
                    raise UpstreamError("the host stalled", status=504, before_first_byte=first) from None
                except (ProtocolError, HTTPError, OSError):
                    raise UpstreamError("the host closed the stream", before_first_byte=first) from None
                if not chunk:
                    raise UpstreamError("the stream ended before [DONE]", before_first_byte=first)
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
                    if not data:
                        continue
                    if data == b"[DONE]":
                        finished = True
                        return
                    if first:
                        first = False
                        self._set_read_timeout(response, self.chunk_timeout)
                    yield data
                if len(buffer) > MAX_EVENT_BYTES:
                    raise UpstreamError("the host sent an event larger than allowed", before_first_byte=first)
        finally:
            if finished:
                response.drain_conn()
            else:
                # A broken stream, or a client gone away: close the socket so the engine stops generating.
                response.close()
            response.release_conn()

    @staticmethod
    def _set_read_timeout(response, seconds: float) -> None:
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if isinstance(sock, socket.socket):
            sock.settimeout(seconds)


def host_message(body: bytes) -> str:
    """What a host said when it refused a request (vLLM's error message), short and printable."""
    try:
        message = orjson.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        try:
            message = orjson.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            message = "The host refused the request."
    return shown(str(message), 500)
