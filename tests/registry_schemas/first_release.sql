-- A registry database as the first release (510bb8b) made it: its DDL, verbatim, and a row per table.
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
    created_at_unix_ms INTEGER NOT NULL
);

INSERT INTO models VALUES ('old-chat', 1, '/models/old.gguf', 1, 'abc123', '/cache/abc123',
    '{{ messages }}', 2048, '{"temperature": 0.5}', 1700000000000);
INSERT INTO servings (name, model, system_prompt, default_sampling, rag_collection,
    created_at_unix_ms) VALUES ('legacy', 'old-chat', 'Be brief.', '{}', 'docs', 1700000001000);
