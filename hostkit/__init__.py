"""hostkit: what a GPU owner runs on their machine. It talks to the router's host API only, and imports
nothing of the router's (a contract in ``pyproject.toml``).

- ``__main__``: the ``hostkit`` CLI; ``check`` (can this machine serve?), ``register`` (an identity and a
  registration), ``commands`` (status, models, up, down, schedule), ``agent`` (the daemon: heartbeats, the
  overlay, the engine the router's answer asks for).
- ``client``: the host API with the host token; ``wireguard``: the overlay interface and its firewall;
  ``diagnostics``: the router's SSH access for ``hostkit check``.
- ``engines``: which engine the agent runs; ``container``: vLLM in an isolated Docker or podman container,
  ``isolation`` what confines it, ``container_entry`` its first process (it dies with the agent), ``relay`` its
  published port.
- ``local/``: the engine where there is no GPU: vLLM's CPU build as a process, and the models built here.
"""
