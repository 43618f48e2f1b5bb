import base64

import pytest
from sqlalchemy import text

from app.extensions import db
from app.models import Host
from overlay import identity, ipam

from ..support.concurrency import at_once


@pytest.mark.parametrize("network, taken, expected", [
    ("10.77.0.0/24", [], "10.77.0.2"),  # .0 is the network, .1 the hub
    ("10.77.0.0/24", ["10.77.0.2", "10.77.0.3"], "10.77.0.4"),
    ("10.77.0.0/24", ["10.77.0.3"], "10.77.0.2"),  # a freed address is given again
    ("10.77.0.0/30", [], "10.77.0.2"),
    ("10.77.0.0/29", [f"10.77.0.{i}" for i in range(2, 6)], "10.77.0.6"),  # .7 is the broadcast address
    ("fd77::/120", [], "fd77::2"),
])
def test_it_gives_the_lowest_free_address(network, taken, expected):
    assert ipam.next_free(network, taken) == expected


@pytest.mark.parametrize("network, taken", [
    ("10.77.0.0/30", ["10.77.0.2"]),
    ("10.77.0.0/29", [f"10.77.0.{i}" for i in range(2, 7)]),
])
def test_it_says_when_the_overlay_is_full(network, taken):
    with pytest.raises(ipam.OverlayFull, match="no free address"):
        ipam.next_free(network, taken)


def test_it_never_gives_one_address_twice_under_concurrency(app, people):
    hosts = []
    for i in range(8):
        host = Host(owner_id=people.bob.id, name=f"h{i}", status="approved")
        db.session.add(host)
        hosts.append(host)
    db.session.commit()
    ids = [h.id for h in hosts]

    def claim(host_id):
        with app.app_context():
            address = ipam.allocate(db.session, "10.77.0.0/24")
            db.session.execute(text("UPDATE hosts SET overlay_address = :a WHERE id = :id"),
                               {"a": address, "id": host_id})
            db.session.commit()
            db.session.remove()

    at_once(claim, ids)
    addresses = db.session.execute(text("SELECT host(overlay_address) FROM hosts ORDER BY 1")).scalars().all()
    assert sorted(addresses, key=lambda a: int(a.rsplit(".", 1)[1])) == [f"10.77.0.{i}" for i in range(2, 10)]


KEY = base64.b64encode(bytes(range(1, 33))).decode()


def test_it_derives_a_stable_peer_id_from_the_public_key():
    pid = identity.peer_id(KEY)
    assert pid.startswith("Qm") and len(pid) == 46 and identity.peer_id(KEY) == pid
    other = base64.b64encode(bytes(range(2, 34))).decode()
    assert identity.peer_id(other) != pid


@pytest.mark.parametrize("key, message", [
    ("", "44 characters of base64"),
    ("not base64!", "44 characters of base64"),
    (base64.b64encode(b"short").decode(), "32 bytes"),
    (base64.b64encode(bytes(32)).decode(), "all-zero"),
    (base64.b64encode(bytes(range(1, 34))).decode(), "32 bytes"),
])
def test_it_refuses_what_is_not_a_public_key(key, message):
    with pytest.raises(identity.PublicKeyError, match=message):
        identity.peer_id(key)
