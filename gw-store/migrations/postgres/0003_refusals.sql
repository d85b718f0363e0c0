-- Why a controller refused a runtime's Hello (an incompatible protocol version, say); NULL
-- for a runtime with a session. A refused runtime is listed in the fleet view with it.
ALTER TABLE runtimes ADD COLUMN refused TEXT;
