"""The first schema: models and the servings that expose them (walking skeleton, 510bb8b)."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Unix milliseconds outgrow PostgreSQL's 32-bit INTEGER; SQLite's INTEGER already holds 64 bits,
# and keeping its name keeps the schema the release without migrations created.
UNIX_MS = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "models",
        # nullable=True writes the key as that release did (SQLite alone reads it literally;
        # primary keys are NOT NULL everywhere else).
        sa.Column("name", sa.Text, primary_key=True, nullable=True),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_format", sa.Integer, nullable=False),
        sa.Column("source_sha256", sa.Text, nullable=False),
        sa.Column("artifact_dir", sa.Text, nullable=False),
        sa.Column("chat_template", sa.Text, nullable=False),
        sa.Column("context_length", sa.Integer, nullable=False),
        sa.Column("default_sampling", sa.Text, nullable=False),
        sa.Column("created_at_unix_ms", UNIX_MS, nullable=False),
    )
    op.create_table(
        "servings",
        # nullable=True: as for models.name.
        sa.Column("id", sa.Integer, primary_key=True, nullable=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("model", sa.Text, sa.ForeignKey("models.name"), nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=False),
        sa.Column("default_sampling", sa.Text, nullable=False),
        sa.Column("rag_collection", sa.Text, nullable=False),
        sa.Column("created_at_unix_ms", UNIX_MS, nullable=False),
        # As the first release had it: ids of deleted servings are never handed out again.
        sqlite_autoincrement=True,
    )
