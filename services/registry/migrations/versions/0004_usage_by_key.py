"""What the console lists of each API key: its last use (from the usage log, through a new
index by key) and the first characters of its secret, which tell keys apart where their
holders can see them (only a hash of the rest is kept)."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("usage_by_key", "usage", ["api_key_id", "created_at_unix_ms"])
    # Keys issued before keep an empty prefix: their secrets are not known.
    op.add_column(
        "api_keys", sa.Column("secret_prefix", sa.Text, nullable=False, server_default="")
    )
