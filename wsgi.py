"""The WSGI entry point: ``gunicorn --worker-class gevent wsgi:app``."""
import sys

from app import create_app
from app.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    print(f"gpushare: refusing to start: {error}", file=sys.stderr)
    raise SystemExit(2) from None
