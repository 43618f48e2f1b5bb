"""What is sold: the model catalog (what clients may call, its license, and its price band), and ``pricing``
(each model's price moving toward its market between the catalog's floor and ceiling).

Only real models are seeded here (``SEED_MODELS``); the demo and test models are ``app.dev.demo``'s.
``pricing`` reads the catalog; of the rest of the app the catalog imports only ``accounts.audit`` and
``money.units``.

Prices are integer micro-USD per million tokens (``money.units``).
"""
from __future__ import annotations

from sqlalchemy import select

from ..accounts import audit
from ..extensions import db
from ..models import CatalogModel, User
from ..money.units import usd

EDITABLE_FIELDS = (
    "display_name", "license_name", "license_url", "attribution", "context_length", "min_vram_mib",
    "reference_input_price", "reference_output_price", "floor_input_price", "floor_output_price",
    "ceiling_input_price", "ceiling_output_price", "input_price", "output_price", "enabled",
    "kind", "tool_call_parser", "reasoning_parser", "parameters_millions",
)


class CatalogError(ValueError):
    """A catalog change that cannot be made; the message is for the admin."""


def entry(hf_id, display_name, license_name, license_url, attribution, context_length, min_vram_mib,
          reference, ceiling, floor, price, *, parameters_millions, kind="chat", tool_call_parser=None,
          reasoning_parser=None) -> dict:
    """A catalog row from prices in dollars per million tokens: (input, output) for each of the reference, the
    ceiling, the floor and the current price. The parsers are vLLM's names (``--tool-call-parser``,
    ``--reasoning-parser``); a model without a tool-call parser is served without tools. ``parameters_millions``:
    the weights one generated token reads (the hardware check's yardstick)."""
    return dict(hf_id=hf_id, display_name=display_name, license_name=license_name, license_url=license_url,
                attribution=attribution, context_length=context_length, min_vram_mib=min_vram_mib,
                kind=kind, tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser,
                parameters_millions=parameters_millions,
                reference_input_price=usd(reference[0]), reference_output_price=usd(reference[1]),
                ceiling_input_price=usd(ceiling[0]), ceiling_output_price=usd(ceiling[1]),
                floor_input_price=usd(floor[0]), floor_output_price=usd(floor[1]),
                input_price=usd(price[0]), output_price=usd(price[1]))


LLAMA_LICENSE = "https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE"
APACHE = ("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")
# Reference prices are the closed models each one competes with (per million input/output tokens).
SMALL_REFERENCE = ("0.15", "0.60")
LARGE_REFERENCE = ("2.50", "10.00")

SEED_MODELS = [
    entry("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct", "Llama 3.1 Community License",
          LLAMA_LICENSE, "Built with Llama. Llama 3.1 is licensed under the Llama 3.1 Community License, "
          "Copyright © Meta Platforms, Inc. All Rights Reserved.", 131072, 18432,
          SMALL_REFERENCE, ("0.10", "0.40"), ("0.02", "0.04"), ("0.05", "0.08"), parameters_millions=8030,
          tool_call_parser="llama3_json"),
    entry("meta-llama/Llama-3.1-70B-Instruct", "Llama 3.1 70B Instruct", "Llama 3.1 Community License",
          LLAMA_LICENSE, "Built with Llama. Llama 3.1 is licensed under the Llama 3.1 Community License, "
          "Copyright © Meta Platforms, Inc. All Rights Reserved.", 131072, 147456,
          LARGE_REFERENCE, ("1.00", "2.00"), ("0.25", "0.35"), ("0.52", "0.75"), parameters_millions=70554,
          tool_call_parser="llama3_json"),
    entry("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct", *APACHE,
          "Mistral 7B Instruct v0.3 by Mistral AI.", 32768, 16384,
          SMALL_REFERENCE, ("0.10", "0.40"), ("0.02", "0.04"), ("0.04", "0.06"), parameters_millions=7248,
          tool_call_parser="mistral"),
    entry("mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral 8x7B Instruct", *APACHE,
          "Mixtral 8x7B Instruct v0.1 by Mistral AI.", 32768, 98304,
          LARGE_REFERENCE, ("0.60", "0.90"), ("0.15", "0.20"), ("0.30", "0.45"), parameters_millions=12879,
          tool_call_parser="mistral"),
    entry("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct", *APACHE,
          "Qwen2.5 7B Instruct by the Qwen team, Alibaba Cloud.", 32768, 18432,
          SMALL_REFERENCE, ("0.10", "0.40"), ("0.02", "0.04"), ("0.04", "0.08"), parameters_millions=7616,
          tool_call_parser="hermes"),
    entry("google/gemma-2-9b-it", "Gemma 2 9B it", "Gemma Terms of Use", "https://ai.google.dev/gemma/terms",
          "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms.",
          8192, 20480, SMALL_REFERENCE, ("0.10", "0.40"), ("0.02", "0.04"), ("0.06", "0.09"), parameters_millions=9242),
]


def seed(rows: list[dict] = SEED_MODELS) -> int:
    """Add the models of ``rows`` (the real models on sale, by default) that are missing; never overwrites an
    admin's edits. Returns how many were added."""
    existing = set(db.session.scalars(select(CatalogModel.hf_id)))
    added = [CatalogModel(**row) for row in rows if row["hf_id"] not in existing]
    db.session.add_all(added)
    db.session.commit()
    return len(added)


def public_models() -> list[CatalogModel]:
    return list(db.session.scalars(select(CatalogModel).where(CatalogModel.enabled).order_by(CatalogModel.id)))


def all_models() -> list[CatalogModel]:
    return list(db.session.scalars(select(CatalogModel).order_by(CatalogModel.id)))


def get_model(model_id: int) -> CatalogModel:
    return db.get_or_404(CatalogModel, model_id)


def check_bands(values: dict) -> None:
    """The price rules the database also enforces, said in words an admin can act on."""
    for side in ("input", "output"):
        floor, ceiling = values[f"floor_{side}_price"], values[f"ceiling_{side}_price"]
        reference, price = values[f"reference_{side}_price"], values[f"{side}_price"]
        if not floor <= ceiling:
            raise CatalogError(f"The {side} floor must not be above the {side} ceiling.")
        if not ceiling < reference:
            raise CatalogError(f"The {side} ceiling must be below the closed-model reference price.")
        if not floor <= price <= ceiling:
            raise CatalogError(f"The current {side} price must lie between the floor and the ceiling.")


def save_model(admin: User, model: CatalogModel | None, values: dict) -> CatalogModel:
    """Create (``model`` None, ``values`` has ``hf_id``) or update a catalog model, audited, and commit."""
    check_bands(values)
    if model is None:
        hf_id = values["hf_id"].strip()
        if db.session.scalar(select(CatalogModel.id).where(CatalogModel.hf_id == hf_id)):
            raise CatalogError(f"{hf_id} is already in the catalog.")
        model = CatalogModel(hf_id=hf_id)
        db.session.add(model)
        action, changes = "model.create", {field: values[field] for field in EDITABLE_FIELDS}
    else:
        action = "model.update"
        changes = {field: [getattr(model, field), values[field]] for field in EDITABLE_FIELDS
                   if getattr(model, field) != values[field]}
    for field in EDITABLE_FIELDS:
        setattr(model, field, values[field])
    db.session.flush()
    if changes:
        audit.record(admin, action, "model", model.id, hf_id=model.hf_id, changes=changes)
    db.session.commit()
    return model
