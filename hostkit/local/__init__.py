"""The engine hostkit runs where there is no GPU: vLLM's CPU build as a process, and the models it can build here.

- ``engine``: ``python -m hostkit.local.engine``: one vLLM OpenAI-compatible server as a child process in its
  own process group, from ``.venv-engine``.
- ``groups``: process groups stopped whole (``end_group``), and the one a dead agent left stopped by the next
  (``record_group``, ``stop_leftover``).
- ``models``: ``python -m hostkit.local.models``: the tiny test model (tiny-chat) built from nothing, and
  SmolLM2-135M-Instruct from a wheel; no download at run time.
- ``store``: each local model built once per machine user; every data directory's copy is hard links to it.
- ``image``: ``python -m hostkit.local.image``: the engine image for podman without a registry, a Debian root
  made with debootstrap holding the engine virtualenv's vLLM.

The router imports ``engine`` for its tests and ``make run``'s demo host only; it uses the standard library
alone. A GPU host runs vLLM's own image instead (``hostkit.container``).
"""
