-- The global revision counter. SQLite serializes writers (one write transaction at a time),
-- so revisions become visible in order: a reader that has seen revision N has seen every
-- revision below it.
CREATE TABLE gw_meta (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    revision          INTEGER NOT NULL,
    -- changes at or below this revision have been deleted from the change log
    compacted_through INTEGER NOT NULL,
    -- identifies this database: runtimes whose configuration came from another one (a
    -- recreated database) are sent a snapshot instead of a delta
    store_id          TEXT NOT NULL
);
INSERT INTO gw_meta (id, revision, compacted_through, store_id) VALUES (1, 0, 0, lower(hex(randomblob(16))));

CREATE TABLE apis (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
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
    revision   INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    spec       TEXT,
    created_at TEXT NOT NULL
);

-- The fleet: every runtime any controller has seen.
CREATE TABLE runtimes (
    node_id             TEXT PRIMARY KEY,
    grp                 TEXT NOT NULL,
    controller_id       TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    -- orders the sessions of one runtime; a register from an older session loses
    session_epoch       INTEGER NOT NULL,
    heartbeat_ms        INTEGER NOT NULL,
    address             TEXT NOT NULL,
    runtime_version     TEXT NOT NULL,
    applied_revision    INTEGER NOT NULL,
    connected           INTEGER NOT NULL,
    connected_at        TEXT NOT NULL,
    last_seen           TEXT NOT NULL,
    last_error          TEXT,
    last_error_revision INTEGER
);
