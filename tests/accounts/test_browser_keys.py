"""The API keys page in a real browser: create and revoke a key through htmx, with no page reload.

Debian's Chromium drives the session app served on a loopback port. A missing
Chromium is a failure, never a skip: this is the only proof the page works
without reloading.
"""
from __future__ import annotations

from ..support import factories


def bearer(app, secret: str) -> int:
    with app.test_client() as client:
        return client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code


def test_it_creates_and_revokes_a_key_without_reloading(app, people, page):
    from playwright.sync_api import expect

    email = people.alice.email

    page.goto("/login?next=/keys")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", factories.PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url("**/keys")
    expect(page.locator("h1")).to_have_text("API keys")

    page.evaluate("window.__marker = 42")

    panel = page.locator("#keys-panel")
    panel.locator("input[name=name]").fill("laptop")
    with page.expect_response(lambda r: r.url.endswith("/keys") and r.request.method == "POST") as created:
        panel.get_by_role("button", name="Create key").click()
    assert created.value.status == 200
    assert created.value.request.headers.get("hx-request") == "true"

    secret_box = page.locator("input.secret")
    expect(secret_box).to_be_visible()
    secret = secret_box.input_value()
    assert secret.startswith("gpsk_")
    assert page.evaluate("window.__marker") == 42, "creating a key reloaded the page"
    assert bearer(app, secret) == 200

    row = page.locator("tr[id^=key-]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("laptop")
    expect(row.locator("td").nth(5)).to_have_text("active")

    dialogs = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_response(lambda r: r.url.endswith("/revoke") and r.request.method == "POST") as revoked:
        row.get_by_role("button", name="Revoke").click()
    assert revoked.value.status == 200
    assert dialogs and dialogs[0].startswith("Revoke laptop?")

    expect(row.locator("td").nth(5)).to_contain_text("revoked")
    expect(row).to_have_class("revoked")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    assert page.evaluate("window.__marker") == 42, "revoking a key reloaded the page"
    assert bearer(app, secret) == 401

    page.reload()
    assert page.evaluate("window.__marker") is None
    expect(page.locator("tr[id^=key-]").locator("td").nth(5)).to_contain_text("revoked")
    expect(page.locator("input.secret")).to_have_count(0)
    assert secret not in page.content()
