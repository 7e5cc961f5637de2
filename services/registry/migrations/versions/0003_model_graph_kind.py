"""Chat models record the graph they were exported to (GraphKind): onnxruntime-genai's
GroupQueryAttention graphs beside optimum's."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# GraphKind.OPTIMUM (registry.proto's GRAPH_KIND_OPTIMUM): every model exported before this
# revision, chat or embedding, is an optimum export.
OPTIMUM = 1


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, in place. The default stays: dropping it would make SQLite copy
    # the table for no gain, as the store writes the column on every insert.
    op.add_column(
        "models", sa.Column("graph", sa.Integer, nullable=False, server_default=str(OPTIMUM))
    )
