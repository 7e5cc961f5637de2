"""An index of the usage log by API key: the console lists each key's last use."""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("usage_by_key", "usage", ["api_key_id", "created_at_unix_ms"])
