"""trust: hosts are staged, verified, degraded or quarantined; spot checks, calibrations and benchmarks are kept

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
# Weights in millions, for the hardware check (Mixtral: the experts one token reads).
PARAMETERS = {
    "meta-llama/Llama-3.1-8B-Instruct": 8030,
    "meta-llama/Llama-3.1-70B-Instruct": 70554,
    "mistralai/Mistral-7B-Instruct-v0.3": 7248,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 12879,
    "Qwen/Qwen2.5-7B-Instruct": 7616,
    "google/gemma-2-9b-it": 9242,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 135,
    "gpushare/tiny-chat": 1,
    "sentence-transformers/all-MiniLM-L6-v2": 23,
}


def upgrade():
    op.add_column("models", sa.Column("parameters_millions", sa.Integer(), server_default="1000", nullable=False))
    op.create_check_constraint(op.f("ck_models_parameters_positive"), "models", "parameters_millions > 0")
    models = sa.table("models", sa.column("hf_id"), sa.column("parameters_millions"))
    for hf_id, millions in PARAMETERS.items():
        op.execute(models.update().where(models.c.hf_id == hf_id).values(parameters_millions=millions))

    op.add_column("hosts", sa.Column("trust_state", sa.String(16), server_default="staged", nullable=False))
    op.add_column("hosts", sa.Column("trust_reason", sa.Text(), server_default="", nullable=False))
    op.add_column("hosts", sa.Column("trust_changed_at", TIMESTAMP, nullable=True))
    op.add_column("hosts", sa.Column("reference", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("hosts", sa.Column("next_canary_at", TIMESTAMP, nullable=True))
    op.create_check_constraint(op.f("ck_hosts_trust_state_known"), "hosts",
                               "trust_state IN ('staged', 'verified', 'degraded', 'quarantined')")
    # Hosts that served before verification existed keep serving; from now on they are checked like any other.
    op.execute("UPDATE hosts SET trust_state = 'verified', trust_changed_at = now(), "
               "trust_reason = 'serving before verification began' WHERE status = 'approved'")

    op.create_table(
        "verification_checks",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reference_host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("test", sa.String(16), nullable=True),
        sa.Column("statistic", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("evidence", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('canary', 'traffic', 'calibration')", name=op.f("ck_verification_checks_kind_known")),
        sa.CheckConstraint("outcome IN ('passed', 'failed', 'inconclusive')", name=op.f("ck_verification_checks_outcome_known")),
        sa.CheckConstraint("test IN ('greedy', 'sampled', 'violation')", name=op.f("ck_verification_checks_test_known")),
        sa.CheckConstraint("tokens >= 0 AND cost_tokens >= 0", name=op.f("ck_verification_checks_tokens_not_negative")),
    )
    op.create_index("ix_verification_checks_host_created", "verification_checks",
                    ["host_id", sa.text("created_at DESC")])

    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("reference_host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_by_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("thresholds", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("statistics", postgresql.JSONB(), server_default="{}", nullable=False),
    )
    op.create_index("ix_calibrations_model_created", "calibrations", ["model_id", sa.text("created_at DESC")])

    op.create_table(
        "host_benchmarks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("gpu", sa.String(120), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("results", postgresql.JSONB(), server_default="[]", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.text("now()"), nullable=False),
    )
    op.create_index("ix_host_benchmarks_host_created", "host_benchmarks", ["host_id", sa.text("created_at DESC")])


def downgrade():
    op.drop_table("host_benchmarks")
    op.drop_table("calibrations")
    op.drop_table("verification_checks")
    for column in ("next_canary_at", "reference", "trust_changed_at", "trust_reason", "trust_state"):
        op.drop_column("hosts", column)
    op.drop_column("models", "parameters_millions")
