-- Runtime enrollment (the sync channel's mTLS).
--
-- Join tokens an operator makes for new runtimes: the secret is kept as its SHA-256 (hex),
-- never in the clear. A use is taken by one conditional UPDATE (right secret, not revoked,
-- not expired, uses < uses_max), so controllers that race cannot exceed uses_max.
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    grp         TEXT NOT NULL,
    uses_max    INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    expires_at  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    description TEXT
);

-- The client certificate each enrolled runtime holds: its serial (hex), the one it renewed
-- (still accepted until the next renewal), and when it was revoked. A new enrollment of the
-- same node replaces the row.
CREATE TABLE runtime_enrollments (
    node_id         TEXT PRIMARY KEY,
    grp             TEXT NOT NULL,
    serial          TEXT NOT NULL,
    previous_serial TEXT,
    not_after       TEXT NOT NULL,
    token_id        TEXT,
    enrolled_at     TEXT NOT NULL,
    renewed_at      TEXT,
    revoked_at      TEXT
);
