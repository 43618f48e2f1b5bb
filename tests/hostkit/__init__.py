"""hostkit on the host: check, register, and the local vLLM engine."""
