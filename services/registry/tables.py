"""The registry's tables as the store queries them (SQLAlchemy Core), at the migrations' head.

Only for building queries: the migrations in migrations/versions create and change the schema;
tests/test_registry_migrations.py checks that these columns are the ones they make.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Integer),
    sa.Column("source", sa.Text),
    sa.Column("source_format", sa.Integer),
    sa.Column("source_sha256", sa.Text),
    sa.Column("artifact_dir", sa.Text),
    sa.Column("chat_template", sa.Text),
    sa.Column("context_length", sa.Integer),
    sa.Column("default_sampling", sa.Text),
    sa.Column("created_at_unix_ms", sa.BigInteger),
    sa.Column("graph", sa.Integer),
)

servings = sa.Table(
    "servings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("system_prompt", sa.Text),
    sa.Column("default_sampling", sa.Text),
    sa.Column("rag_collection", sa.Text),
    sa.Column("created_at_unix_ms", sa.BigInteger),
    sa.Column("moderation", sa.Text),
    sa.Column("limits", sa.Text),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("serving_id", sa.Integer),
    sa.Column("name", sa.Text),
    sa.Column("secret_sha256", sa.Text),
    sa.Column("created_at_unix_ms", sa.BigInteger),
    sa.Column("expires_at_unix_ms", sa.BigInteger),
    sa.Column("revoked_at_unix_ms", sa.BigInteger),
    sa.Column("secret_prefix", sa.Text),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("created_at_unix_ms", sa.BigInteger),
    sa.Column("serving_id", sa.Integer),
    sa.Column("model", sa.Text),
    sa.Column("api_key_id", sa.Text),
    sa.Column("user_id", sa.Text),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("latency_ms", sa.Integer),
    sa.Column("ttft_ms", sa.Integer),
    sa.Column("status", sa.Integer),
    sa.Column("blocked", sa.Integer),
    sa.Column("endpoint", sa.Text),
)
