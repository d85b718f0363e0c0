-- When a runtime's current certificate was first seen in use (a stream opened with it).
-- Until then the certificate it renewed may renew again (the answer of a renewal can be
-- lost); after, a renewal with that superseded certificate means two holders of the
-- node's identity, and revokes the node.
ALTER TABLE runtime_enrollments ADD COLUMN serial_in_use_at TEXT;
