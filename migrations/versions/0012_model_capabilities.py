"""the catalog names each model's kind (chat or embedding) and its tool-call and reasoning parsers, as vLLM calls them

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

PARSERS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama3_json",
    "meta-llama/Llama-3.1-70B-Instruct": "llama3_json",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistral",
    "Qwen/Qwen2.5-7B-Instruct": "hermes",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "hermes",
    "gpushare/tiny-chat": "hermes",
}


def upgrade():
    op.add_column("models", sa.Column("kind", sa.String(16), server_default="chat", nullable=False))
    op.create_check_constraint(op.f("ck_models_kind_known"), "models", "kind IN ('chat', 'embedding')")
    op.add_column("models", sa.Column("tool_call_parser", sa.String(40), nullable=True))
    op.add_column("models", sa.Column("reasoning_parser", sa.String(40), nullable=True))
    for name in ("tool_call_parser", "reasoning_parser"):
        op.create_check_constraint(op.f(f"ck_models_{name}_name"), "models", f"{name} ~ '^[a-z0-9_]{{1,40}}$'")
    models = sa.table("models", sa.column("hf_id"), sa.column("tool_call_parser"))
    for hf_id, parser in PARSERS.items():
        op.execute(models.update().where(models.c.hf_id == hf_id).values(tool_call_parser=parser))


def downgrade():
    op.drop_column("models", "reasoning_parser")
    op.drop_column("models", "tool_call_parser")
    op.drop_column("models", "kind")
