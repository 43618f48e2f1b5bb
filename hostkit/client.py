"""Talking to the router's host API with the host token that ``hostkit register`` kept."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("HOSTKIT_STATE_DIR", "/var/lib/hostkit"))
TIMEOUT_SECONDS = 30


class HostkitError(Exception):
    """A command failed; the message is the one line the CLI prints."""


def write_private(path: Path, text: str) -> None:
    """Write a file only root can read (the directory 0700, the file 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def request(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"the router answered {error.code} {error.reason}"
        finally:
            error.close()
        raise HostkitError(message) from None
    except (urllib.error.URLError, OSError) as error:
        raise HostkitError(f"cannot reach the router at {url}: {getattr(error, 'reason', error)}") from None


class Router:
    """The router this machine registered with, as ``STATE_DIR/host.json`` records it."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir)
        path = self.state_dir / "host.json"
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            raise HostkitError(f"this machine is not registered ({path} is missing): run "
                               "`hostkit register --router URL --invite KEY` first") from None
        except (OSError, ValueError) as error:
            raise HostkitError(f"cannot read {path}: {error}") from None
        self.url, self.token = saved["router"], saved["token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        return request(method, f"{self.url}/api/hosts{path}", body, self.token)

    def me(self) -> dict:
        return self.call("GET", "/me")["host"]

    def overlay(self) -> dict:
        return self.call("GET", "/overlay")["overlay"]

    def heartbeat(self, report: dict) -> dict:
        return self.call("POST", "/heartbeat", report)["host"]

    def private_key(self) -> str:
        path = self.state_dir / "wireguard.key"
        try:
            return path.read_text().strip()
        except OSError as error:
            raise HostkitError(f"cannot read this machine's WireGuard key {path}: {error}") from None
