-- The audit log: one row per successful write through the admin API.
--
-- A resource write (APIs, certificates, consumers and their credentials) inserts its row in
-- the transaction of the change itself; the other writes (tokens, enrollments, revocations)
-- insert theirs right after. Rows hold digests of the stored definitions, never the
-- definitions nor a secret. `id` grows with every row: newest first is `ORDER BY id DESC`.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    source        TEXT,
    request_id    TEXT NOT NULL,
    action        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    detail        TEXT,
    revision      INTEGER,
    before_digest TEXT,
    after_digest  TEXT
);

CREATE INDEX audit_log_at ON audit_log (at);
