"""The gateway (a7eb293): API keys, the usage log, and moderation and limits per serving."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# As in 0001: 64-bit Unix milliseconds, named INTEGER on SQLite.
UNIX_MS = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Both columns hold JSON read with a default for every missing key, so '{}' gives servings
    # made before no moderation and no limits.
    with op.batch_alter_table("servings") as batch:
        batch.add_column(sa.Column("moderation", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("limits", sa.Text, nullable=False, server_default="{}"))
    # The store always writes both; without the defaults the schema is the one the release
    # without migrations created. SQLite drops a default by copying the table, which loses
    # AUTOINCREMENT unless told again and restarts ids after the highest live one: harmless
    # here, as nothing referred to a serving's id before this revision.
    with op.batch_alter_table("servings", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("moderation", server_default=None)
        batch.alter_column("limits", server_default=None)

    op.create_table(
        "api_keys",
        # nullable=True: see 0001.
        sa.Column("id", sa.Text, primary_key=True, nullable=True),
        sa.Column(
            "serving_id",
            sa.Integer,
            sa.ForeignKey("servings.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("created_at_unix_ms", UNIX_MS, nullable=False),
        sa.Column("expires_at_unix_ms", UNIX_MS, nullable=False),
        sa.Column("revoked_at_unix_ms", UNIX_MS, nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("request_id", sa.Text, primary_key=True, nullable=True),
        sa.Column("created_at_unix_ms", UNIX_MS, nullable=False),
        # No foreign key: usage outlives the servings and keys it names.
        sa.Column("serving_id", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("api_key_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("blocked", sa.Integer, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
    )
    op.create_index("usage_by_time", "usage", ["created_at_unix_ms"])
    op.create_index("usage_by_serving", "usage", ["serving_id", "created_at_unix_ms"])
