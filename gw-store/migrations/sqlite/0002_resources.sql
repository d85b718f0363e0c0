-- Resources of every kind other than APIs (TLS certificates first; consumers and credentials
-- later), keyed by kind and name. APIs keep their own table because they own routes. Writes
-- follow the same rules as for APIs: the row and its change (kind = the resource kind) are
-- committed in one transaction under a new global revision.
CREATE TABLE resources (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
