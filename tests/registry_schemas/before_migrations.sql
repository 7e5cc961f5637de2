-- A registry database as the last release without migrations (a7eb293 .. 4928de3) made it: its
-- DDL, verbatim, and a row per table. The key's secret is 'sk-llms-made-before-migrations'.
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    source TEXT NOT NULL,
    source_format INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL,
    artifact_dir TEXT NOT NULL,
    chat_template TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    default_sampling TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS servings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model TEXT NOT NULL REFERENCES models(name),
    system_prompt TEXT NOT NULL,
    default_sampling TEXT NOT NULL,
    rag_collection TEXT NOT NULL,
    created_at_unix_ms INTEGER NOT NULL,
    moderation TEXT NOT NULL,
    limits TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    serving_id INTEGER NOT NULL REFERENCES servings(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at_unix_ms INTEGER NOT NULL,
    expires_at_unix_ms INTEGER NOT NULL,
    revoked_at_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    created_at_unix_ms INTEGER NOT NULL,
    serving_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    blocked INTEGER NOT NULL,
    endpoint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (created_at_unix_ms);
CREATE INDEX IF NOT EXISTS usage_by_serving ON usage (serving_id, created_at_unix_ms);

INSERT INTO models VALUES ('old-chat', 1, '/models/old.gguf', 1, 'abc123', '/cache/abc123',
    '{{ messages }}', 2048, '{"temperature": 0.5}', 1700000000000);
INSERT INTO servings (name, model, system_prompt, default_sampling, rag_collection,
    created_at_unix_ms, moderation, limits) VALUES ('guarded', 'old-chat', '', '{}', '',
    1700000001000, '{"enabled": true, "blocked_terms": ["secret"], "action": "withhold"}',
    '{"requests_per_minute": 60, "tokens_per_minute": 0, "max_concurrent_requests": 2,
      "key_requests_per_minute": 0, "key_tokens_per_minute": 0, "key_max_concurrent_requests": 0}');
INSERT INTO api_keys VALUES ('key_0123456789abcdef', 1, 'ops',
    '4918441c71051ac3a9e000b9f836844fd7b7f5ec8c4b023f4156caba344ebeff', 1700000002000, 0, 0);
INSERT INTO usage VALUES ('chatcmpl-old', 1700000003000, 1, 'old-chat', 'key_0123456789abcdef',
    'alice', 12, 7, 250, 40, 1, 0, '/v1/chat/completions');
