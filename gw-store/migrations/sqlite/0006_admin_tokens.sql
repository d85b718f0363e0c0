-- Named admin tokens: who may call the admin API, with which role, for which gateway groups.
--
-- The secret is kept as its SHA-256 (hex), never in the clear; the id is public (it is part
-- of the token's text). A name is unique among the tokens not revoked, so a revoked token's
-- name can be given again. `grps` is a JSON array of gateway group names, empty for every
-- group. `last_used_at` is written at most once a minute per token.
CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    role         TEXT NOT NULL,
    grps         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);

CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens (name) WHERE revoked_at IS NULL;
