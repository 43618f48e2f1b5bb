"""app/money/ledger.sql is the ledger's SQL as it is now: each function in it is the one a migrated database
runs, and it has every one of them."""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text

from app import ROOT
from app.extensions import db

SQL = ROOT / "app" / "money" / "ledger.sql"
FUNCTION = re.compile(r"^CREATE OR REPLACE FUNCTION public\.(\w+)\(.*?^AS \$function\$.*?\$function\$;",
                      re.DOTALL | re.MULTILINE)


def written(path: Path) -> dict[str, str]:
    return {match[1]: match[0].removesuffix(";") for match in FUNCTION.finditer(path.read_text())}


def test_every_ledger_function_reads_as_the_database_runs_it(ctx):
    running = dict(db.session.execute(text(
        "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND (p.proname LIKE 'gs\\_%' OR p.proname LIKE 'ledger\\_%')")).all())
    in_file = written(SQL)
    assert sorted(in_file) == sorted(running)
    for name, body in running.items():
        assert in_file[name] == body.rstrip(), f"{name} in ledger.sql is not what the migrations made"
