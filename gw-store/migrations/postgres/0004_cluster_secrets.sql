-- Values the controllers of a cluster share and make once: the first controller to start
-- inserts one, and every other reads the one that won (INSERT ... ON CONFLICT DO NOTHING,
-- then SELECT). The internal CA of the sync channel is the first (its private key sealed
-- under GW_ENCRYPTION_KEY). Rows are never rewritten in place by a plain start.
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
