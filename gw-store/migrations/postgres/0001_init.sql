-- The global revision counter. Every write takes this row's lock first, so writers are
-- serialized and revisions become visible in order: a reader that has seen revision N has
-- seen every revision below it.
CREATE TABLE gw_meta (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    revision          BIGINT NOT NULL,
    -- changes at or below this revision have been deleted from the change log
    compacted_through BIGINT NOT NULL,
    -- identifies this database: runtimes whose configuration came from another one (a
    -- recreated database) are sent a snapshot instead of a delta
    store_id          TEXT NOT NULL
);
INSERT INTO gw_meta (id, revision, compacted_through, store_id) VALUES (1, 0, 0, md5(random()::text || clock_timestamp()::text));

CREATE TABLE apis (
    name       TEXT PRIMARY KEY,
    spec       JSONB NOT NULL,
    revision   BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- The places in the routing table each API occupies; the primary key makes two APIs
-- claiming one context on one host within one group impossible, even across controllers.
CREATE TABLE api_routes (
    grp      TEXT NOT NULL,
    host     TEXT NOT NULL,
    context  TEXT NOT NULL,
    api_name TEXT NOT NULL REFERENCES apis (name) ON DELETE CASCADE,
    PRIMARY KEY (grp, host, context)
);
CREATE INDEX api_routes_by_api ON api_routes (api_name);

-- The change log (outbox), written in the same transaction as the resource.
CREATE TABLE changes (
    revision   BIGINT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    spec       JSONB,
    created_at TIMESTAMPTZ NOT NULL
);

-- The fleet: every runtime any controller has seen.
CREATE TABLE runtimes (
    node_id             TEXT PRIMARY KEY,
    grp                 TEXT NOT NULL,
    controller_id       TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    -- orders the sessions of one runtime; a register from an older session loses
    session_epoch       BIGINT NOT NULL,
    heartbeat_ms        BIGINT NOT NULL,
    address             TEXT NOT NULL,
    runtime_version     TEXT NOT NULL,
    applied_revision    BIGINT NOT NULL,
    connected           BOOLEAN NOT NULL,
    connected_at        TIMESTAMPTZ NOT NULL,
    last_seen           TIMESTAMPTZ NOT NULL,
    last_error          TEXT,
    last_error_revision BIGINT
);
