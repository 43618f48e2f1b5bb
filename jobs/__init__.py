"""Background work run by RQ workers: health checks, pricing, settlement, payouts.

Jobs are plain functions; the registry (queue names, the connection, the
periodic schedule) lives beside them and workers start through ``flask``.
"""
