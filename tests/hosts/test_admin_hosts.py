"""The admin's hosts page: fleet counts, hardware reports, and approve, reject, suspend and reinstate in place."""
import re

from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Host

from ..support import h100_report
from ..support.factories import PASSWORD, make_host

H100 = h100_report()
HX = {"HX-Request": "true"}


def rig(owner, status, name, *, healthy=True) -> Host:
    host = make_host(owner, [], name=name, status=status, healthy=healthy)
    host.hardware, host.engine_port = H100, 8000
    db.session.commit()
    return host


def counts(html: str) -> dict[str, int]:
    block = html.split('id="fleet-counts"')[1].split("</dl>")[0]
    return {label: int(n) for label, n in re.findall(r"<dt>(\w+)</dt><dd>(\d+)</dd>", block)}


def test_it_shows_fleet_counts_and_groups_hosts_by_status(client, auth, people):
    for status, name, healthy in (("pending", "p1", False), ("pending", "p2", False), ("approved", "a1", True),
                                  ("approved", "a2", False), ("suspended", "s1", False), ("rejected", "r1", False)):
        rig(people.bob, status, name, healthy=healthy)
    auth.login(people.carol)
    page = client.get("/admin/hosts").get_data(as_text=True)
    assert counts(page) == {"Pending": 2, "Approved": 2, "Healthy": 1, "Suspended": 1, "Rejected": 1}
    headings = re.findall(r'<tr><th colspan="7">([^<]+)</th></tr>', page)
    assert headings == ["Waiting for approval (2)", "Approved (2)", "Suspended (1)", "Rejected (1)"]
    assert page.count(">Approve<") == 2 and page.count(">Reject<") == 2
    assert page.count(">Suspend<") == 2 and page.count(">Reinstate<") == 1
    assert page.count(">Run diagnostics<") == 2  # approved hosts only


def test_it_shows_the_hardware_report_readably(client, auth, people):
    rig(people.bob, "pending", "rig-1")
    auth.login(people.carol)
    page = client.get("/admin/hosts").get_data(as_text=True)
    row = page.split('<tr id="host-1">')[1].split("</tr>")[0]
    assert "<details open>" in row and "<strong>Not ready.</strong>" in row and "fix wireguard" in row
    assert "<strong>gpu</strong> (ok): 1 GPU: NVIDIA H100 80GB HBM3 (80 GiB)" in row
    assert "<strong>wireguard</strong> (fail): The `wg` tool is missing: install wireguard-tools" in row
    assert "<strong>docker</strong> (warn)" in row and row.count("<li") == 6


def test_it_changes_a_hosts_status_in_place_and_audits_each_change(client, auth, people):
    kept, dropped = rig(people.bob, "pending", "keep"), rig(people.bob, "pending", "drop")
    auth.login(people.carol)
    token = auth.token("/admin/hosts")
    steps = ((kept, "approve", "approved"), (dropped, "reject", "rejected"), (kept, "suspend", "suspended"),
             (kept, "reinstate", "approved"))
    for host, change, status in steps:
        response = client.post(f"/admin/hosts/{host.id}/{change}", data={"csrf_token": token}, headers=HX)
        row = response.get_data(as_text=True)
        assert response.status_code == 200 and response.headers["HX-Trigger"] == "fleet-changed"
        assert row.lstrip().startswith(f'<tr id="host-{host.id}"') and f"<td>{status}" in row
        assert db.session.get(Host, host.id).status == status
    assert ">Suspend<" in row and ">Run diagnostics<" in row
    assert str(db.session.get(Host, kept.id).overlay_address) in row
    counts_part = client.get("/admin/hosts/counts", headers=HX).get_data(as_text=True)
    assert counts(counts_part) == {"Pending": 0, "Approved": 1, "Healthy": 1, "Suspended": 0, "Rejected": 1}
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.target_type == "host")
                                .order_by(AuditEvent.id)).all()
    assert [(e.action, e.target_id, e.actor_id) for e in events] == [
        ("host.approve", str(kept.id), people.carol.id), ("host.reject", str(dropped.id), people.carol.id),
        ("host.suspend", str(kept.id), people.carol.id), ("host.reinstate", str(kept.id), people.carol.id)]


def test_it_refuses_a_change_that_no_longer_applies_with_the_reason_in_the_row(client, auth, people):
    host = rig(people.bob, "rejected", "late")
    auth.login(people.carol)
    response = client.post(f"/admin/hosts/{host.id}/approve", data={"csrf_token": auth.token("/admin/hosts")},
                           headers=HX)
    assert response.status_code == 409 and "this host is rejected, so it cannot be approved now" in response.get_data(
        as_text=True)
    without_htmx = client.post(f"/admin/hosts/{host.id}/suspend", data={"csrf_token": auth.token("/admin/hosts")})
    assert without_htmx.status_code == 302
    assert "cannot be suspended now" in client.get("/admin/hosts").get_data(as_text=True)
    assert db.session.get(Host, host.id).status == "rejected"
    assert client.post("/admin/hosts/999/approve", data={"csrf_token": auth.token("/admin/hosts")}).status_code == 404


def test_it_keeps_the_hosts_page_and_its_actions_to_admins(client, auth, people):
    host = rig(people.bob, "approved", "rig")
    auth.login(people.bob)
    token = auth.token("/host")
    assert client.get("/admin/hosts").status_code == 403
    assert client.get("/admin/hosts/counts").status_code == 403
    assert client.post(f"/admin/hosts/{host.id}/diagnostics", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/admin/hosts/{host.id}/suspend", data={"csrf_token": token}).status_code == 403
    assert db.session.get(Host, host.id).status == "approved"
    assert db.session.scalar(select(AuditEvent.id).where(AuditEvent.target_type == "host")) is None


def test_it_approves_in_a_browser_and_the_counts_follow(people, page):
    from playwright.sync_api import expect

    host = rig(people.bob, "pending", "rig-1")
    page.goto("/login?next=/admin/hosts")
    page.fill("input[name=email]", people.carol.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/admin/hosts")
    page.evaluate("window.__marker = 42")
    expect(page.locator("#fleet-counts")).to_contain_text("Pending1Approved0")
    row = page.locator(f"#host-{host.id}")
    row.get_by_role("button", name="Approve").click()
    expect(row.locator("td").nth(2)).to_contain_text("approved")
    expect(row.get_by_role("button", name="Run diagnostics")).to_be_visible()
    expect(page.locator("#fleet-counts")).to_contain_text("Pending0Approved1")
    assert page.evaluate("window.__marker") == 42, "approving reloaded the page"
