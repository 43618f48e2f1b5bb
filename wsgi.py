"""The WSGI entry point: ``gunicorn --worker-class gevent wsgi:app``."""
import sys

from app import create_app
from app.config import ConfigError

BOOT_ERROR = 3  # gunicorn's "worker failed to boot": the arbiter stops instead of respawning

try:
    app = create_app()
except ConfigError as error:
    print(f"gpushare: refusing to start: {error}", file=sys.stderr)
    raise SystemExit(BOOT_ERROR) from None
