"""The ledger's rules are the database's: what any code path, or a person with psql, cannot do."""
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.extensions import db
from app.models import User
from app.money import ledger

from ..support.concurrency import at_once
from ..support.factories import give_credits


@pytest.fixture
def funded(people):
    give_credits(people.alice, "1")
    return ledger.account_id("client", people.alice)


@pytest.mark.parametrize("statement, message", [
    ("UPDATE ledger_entries SET amount = amount + 1", "append-only"),
    ("DELETE FROM ledger_entries", "append-only"),
    ("UPDATE ledger_transfers SET memo = 'changed'", "append-only"),
    ("DELETE FROM ledger_transfers", "append-only"),
])
def test_it_refuses_to_change_posted_entries(funded, statement, message):
    with pytest.raises(DBAPIError, match=message):
        db.session.execute(text(statement))
    db.session.rollback()
    assert ledger.invariants() == []


def test_it_refuses_an_unbalanced_transfer_at_commit(people, funded):
    db.session.execute(text("INSERT INTO ledger_transfers (id, kind) VALUES ('bad', 'grant')"))
    db.session.execute(text("INSERT INTO ledger_entries (transfer_id, account_id, amount) VALUES ('bad', :a, 5)"),
                       {"a": funded})
    with pytest.raises(DBAPIError, match="unbalanced by 5"):
        db.session.commit()
    db.session.rollback()
    assert ledger.account("client", people.alice).balance == 1_000_000


def test_it_refuses_an_overdraft(people, funded):
    with pytest.raises(DBAPIError, match="no_overdraft"):
        ledger.post("spend", "usage", [(funded, -1_000_001), (ledger.account_id("platform_fees"), 1_000_001)])
        db.session.commit()
    db.session.rollback()
    assert ledger.invariants() == []


def test_it_corrects_with_a_reversing_transfer(people, funded):
    grants = ledger.account_id("grants")
    ledger.post("reverse:test", "reversal", [(funded, -400_000), (grants, 400_000)], memo="granted too much")
    db.session.commit()
    assert ledger.account("client", people.alice).balance == 600_000
    assert ledger.invariants() == []


def test_it_posts_a_transfer_once_however_often_it_is_sent(people, funded):
    entries = [(funded, -1), (ledger.account_id("platform_fees"), 1)]
    assert ledger.post("once", "usage", entries) is True
    assert ledger.post("once", "usage", entries) is False
    db.session.commit()
    assert ledger.account("client", people.alice).balance == 999_999


def test_it_grants_once_when_two_grants_with_one_id_race(app, people):
    results = []

    def grant(_):
        with app.app_context():
            user = db.session.get(User, people.alice.id)
            try:
                results.append(ledger.grant(None, user, 500_000, memo="race", transfer_id="grant:race"))
            except DBAPIError:
                results.append("conflict")
            finally:
                db.session.remove()

    at_once(grant, range(2))
    assert sorted(map(str, results)) in (["False", "True"], ["True", "conflict"])
    assert ledger.account("client", people.alice).balance == 500_000
    assert ledger.invariants() == []
