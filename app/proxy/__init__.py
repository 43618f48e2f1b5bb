"""The OpenAI-compatible API under ``/v1``, in the order a request meets it:

1. ``views``: the routes, the API key (``accounts.api_keys``) and OpenAI's error object (``errors``) for
   every failure; ``openapi`` is the document of what ``/v1`` accepts and answers.
2. ``admission``: strict JSON, known parameters only, every size bounded.
3. ``metering``: the prompt counted with the model's own tokenizer; ``ratelimit``: requests and tokens per
   minute per key, in Redis.
4. ``settlement``: the worst-case cost held in PostgreSQL (``gs_hold``), and, at the end, the usage recorded
   and the money moved (``gs_finish``); ``journal`` keeps on local disk what a killed process owes.
5. ``routing``: the hosts that serve the model now (``hosts.serving``'s rule in SQL), least outstanding
   first; ``InFlight`` is "this request holds a host".
6. ``upstream``: the request sent to the host's engine, its answer read with timeouts.
7. ``relay``: the answer rebuilt to OpenAI's schema (``normalise``) and sent whole or as a stream, counted
   with the router's tokenizer, and settled once.

``gateway`` runs the stages: ``complete(endpoint)`` is the whole path of one request. Imports go down this
list: ``views`` -> ``gateway`` -> the stages; no stage imports ``views`` or ``gateway`` (``relay`` names
``gateway.Call`` for its types only).
"""
from .views import bp

__all__ = ["bp"]
