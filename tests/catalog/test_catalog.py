import pytest
from sqlalchemy import select

from app import catalog
from app.dev import demo
from app.extensions import db
from app.models import AuditEvent, CatalogModel
from app.money.units import format_usd

SEEDED = ["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
          "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen2.5-7B-Instruct",
          "google/gemma-2-9b-it"]


def test_it_seeds_the_catalog_once_with_llama_first(ctx):
    assert catalog.seed() == len(SEEDED)
    assert catalog.seed() == 0
    assert [m.hf_id for m in catalog.all_models()] == SEEDED
    for model in catalog.all_models():
        assert model.floor_input_price <= model.input_price <= model.ceiling_input_price < model.reference_input_price
        assert model.license_name and model.license_url.startswith("https://")


def test_flask_seed_puts_only_real_models_on_sale(app, client, ctx):
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0 and f"{len(SEEDED)} added" in result.output
    page = client.get("/models").get_data(as_text=True)
    assert all(model.display_name in page for model in catalog.all_models())
    assert "SmolLM2" not in page and "tiny" not in page


def test_make_run_adds_the_demo_and_test_models_beside_the_real_ones(ctx):
    assert demo.seed_models() == len(SEEDED) + 3
    assert [m.hf_id for m in catalog.all_models()] == [*SEEDED, demo.DEMO_MODEL, demo.TINY_TEST_MODEL,
                                                      demo.DEMO_EMBEDDING_MODEL]


def test_it_lists_models_publicly_with_license_and_price(client, ctx):
    catalog.seed()
    page = client.get("/models").get_data(as_text=True)
    assert "Llama 3.1 8B Instruct" in page and "Llama 3.1 Community License" in page and "Built with Llama" in page
    assert "$0.05" in page and "$0.15 / $0.60" in page  # current input price and the reference it undercuts
    assert page.index("Llama 3.1 8B Instruct") < page.index("Mistral 7B Instruct")


def edit_form(model: CatalogModel, **changes) -> dict:
    data = {field: getattr(model, field) for field in catalog.EDITABLE_FIELDS}
    for field in ("reference_input_price", "reference_output_price", "floor_input_price", "floor_output_price",
                  "ceiling_input_price", "ceiling_output_price", "input_price", "output_price"):
        data[field] = format_usd(data[field])
    data["enabled"] = "y" if data["enabled"] else ""
    return data | changes


def test_it_lets_an_admin_edit_a_model_and_audits_it(client, auth, people):
    catalog.seed()
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == "google/gemma-2-9b-it"))
    auth.login(people.carol)
    response = client.post(f"/admin/models/{model.id}", data=edit_form(model, input_price="0.07", enabled="",
                                                                       csrf_token=auth.token("/admin/models")))
    assert response.status_code == 302
    db.session.refresh(model)
    assert model.input_price == 70_000 and not model.enabled
    assert "google/gemma-2-9b-it" not in client.get("/models").get_data(as_text=True)
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "model.update"))
    assert event.actor_id == people.carol.id and event.details["changes"]["input_price"] == [60_000, 70_000]


@pytest.mark.parametrize("changes, message", [
    ({"ceiling_input_price": "0.20"}, "The input ceiling must be below the closed-model reference price."),
    ({"input_price": "0.50"}, "The current input price must lie between the floor and the ceiling."),
    ({"floor_output_price": "0.50"}, "The output floor must not be above the output ceiling."),
    ({"output_price": "-1"}, "must be zero or more"),
])
def test_it_refuses_a_price_outside_the_band_and_changes_nothing(client, auth, people, changes, message):
    catalog.seed()
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == "google/gemma-2-9b-it"))
    before = {field: getattr(model, field) for field in catalog.EDITABLE_FIELDS}
    auth.login(people.carol)
    response = client.post(f"/admin/models/{model.id}",
                           data=edit_form(model, **changes, csrf_token=auth.token("/admin/models")))
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    db.session.refresh(model)
    assert {field: getattr(model, field) for field in catalog.EDITABLE_FIELDS} == before


def test_it_lets_an_admin_add_a_model(client, auth, people):
    auth.login(people.carol)
    data = {"hf_id": "microsoft/Phi-3.5-mini-instruct", "display_name": "Phi 3.5 mini", "license_name": "MIT",
            "license_url": "https://opensource.org/license/mit", "attribution": "", "context_length": "131072",
            "min_vram_mib": "8192", "parameters_millions": "3821", "reference_input_price": "0.15",
            "reference_output_price": "0.60",
            "floor_input_price": "0.01", "floor_output_price": "0.02", "ceiling_input_price": "0.10",
            "ceiling_output_price": "0.30", "input_price": "0.03", "output_price": "0.05", "enabled": "y",
            "csrf_token": auth.token("/admin/models/new")}
    assert client.post("/admin/models/new", data=data).status_code == 302
    assert "Phi 3.5 mini" in client.get("/models").get_data(as_text=True)
    response = client.post("/admin/models/new", data=data | {"csrf_token": auth.token("/admin/models/new")})
    assert response.status_code == 400 and "already in the catalog" in response.get_data(as_text=True)


def test_it_answers_404_for_a_model_that_does_not_exist(client, auth, people):
    auth.login(people.carol)
    assert client.get("/admin/models/999").status_code == 404
