"""hostkit: the host's CLI and agent (hardware check, register, models, up/down, schedule, engine)."""
