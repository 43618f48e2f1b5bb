"""The /v1 request path: fake hosts that misbehave, real vLLM hosts, the journal, schemas, routing."""
