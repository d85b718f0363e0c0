-- Runtime enrollment (the sync channel's mTLS).
--
-- Join tokens an operator makes for new runtimes: the secret is kept as its SHA-256 (hex),
-- never in the clear. A use is taken by one conditional UPDATE (right secret, not revoked,
-- not expired, uses < uses_max), so controllers that race cannot exceed uses_max.
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    grp         TEXT NOT NULL,
    uses_max    BIGINT NOT NULL,
    uses        BIGINT NOT NULL DEFAULT 0,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
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
    not_after       TIMESTAMPTZ NOT NULL,
    token_id        TEXT,
    enrolled_at     TIMESTAMPTZ NOT NULL,
    renewed_at      TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ
);
