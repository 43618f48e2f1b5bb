"""What only ``make run`` and the tests use; nothing in the product imports this package.

- ``serve``: ``python -m app.dev.serve`` (what ``make run`` runs): migrate, seed, and supervise the whole
  platform on one machine until Ctrl-C.
- ``supervisor``: the platform's processes, restarted with backoff when they die.
- ``janitor``: a watcher in its own session that removes whatever a run left when ``serve`` dies, even by
  SIGKILL.
- ``instance``: the names, networks and ports of one run, so two runs on one machine never meet.
- ``demo_network``: the demo host's own "machine", a network namespace joined by a veth pair.
"""
