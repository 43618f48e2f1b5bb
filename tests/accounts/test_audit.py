import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.accounts import audit
from app.extensions import db


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET action = 'nothing.happened'",
    "DELETE FROM audit_log",
])
def test_it_refuses_to_change_or_remove_audit_rows(ctx, people, statement):
    audit.record(people.carol, "model.update", "model", 1, changes={})
    db.session.commit()
    with pytest.raises(DBAPIError, match="audit_log is append-only"):
        db.session.execute(text(statement))
    db.session.rollback()
    assert db.session.execute(text("SELECT count(*) FROM audit_log WHERE action = 'model.update'")).scalar() == 1


def test_it_shows_the_audit_log_to_admins_only(client, auth, people):
    audit.record(people.carol, "model.update", "model", 7, changes={"enabled": [True, False]})
    db.session.commit()
    auth.login(people.carol)
    page = client.get("/admin/audit").get_data(as_text=True)
    assert "model.update" in page and "carol@example.com" in page
    auth.logout()
    auth.login(people.alice)
    assert client.get("/admin/audit").status_code == 403
