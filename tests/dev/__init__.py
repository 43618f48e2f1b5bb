"""make run: python -m app.dev.serve and its supervisor and janitor."""
