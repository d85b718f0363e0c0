//! The audit log: who wrote what through the admin API, when, from where.
//!
//! A caller describes a write's author with an [`Audit`] passed to the write itself; the
//! store turns it into an [`AuditRecord`] with the write's kind, name, revision and the
//! digests of the definition before and after ([`digest`]: SHA-256 of its canonical JSON,
//! never the JSON itself). Every audited write inserts its record in the transaction of the
//! change: resource writes ([`crate::Store::put_api`], [`crate::Store::put_resource`] and the
//! deletes), enrollment and admin tokens (create, revoke) and runtime enrollments (revoke,
//! forget). So a write that fails (not found, a conflict, bad input, the database gone
//! mid-way) records nothing, and a recorded write happened: there is no moment at which a
//! crash leaves a change without its record. Every record is also logged, once committed, as
//! one JSON line at info level with target [`LOG_TARGET`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The tracing target of the audit log's JSON lines.
pub const LOG_TARGET: &str = "gw_audit";

/// The kind of enrollment tokens in the audit log (named by id).
pub const KIND_ENROLLMENT_TOKEN: &str = "enrollment-token";
/// The kind of admin tokens in the audit log (named by id).
pub const KIND_ADMIN_TOKEN: &str = "admin-token";
/// The kind of runtime enrollments in the audit log (named by node id).
pub const KIND_RUNTIME: &str = "runtime";

/// Who makes a write, as the admin API knows the request: the author of an audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The admin token's name, `break-glass` for `GW_ADMIN_TOKEN`, `anonymous` in
    /// development mode without a token.
    pub actor: String,
    /// The actor's role (`admin`, `operator`, `viewer`).
    pub role: String,
    /// The client's address, when the server knows it.
    pub source: Option<String>,
    /// The request's id (its `x-request-id`).
    pub request_id: String,
    /// What the write does (`rotate`, `add-credential`, …); `None` lets the write say what
    /// it is (`create`, `update`, `delete`, `revoke`, `forget`).
    pub action: Option<String>,
    /// A word more about the write, never a secret (the credential a call adds, say).
    pub detail: Option<String>,
}

impl Audit {
    /// The same author, with `action` and `detail`.
    #[must_use]
    pub fn doing(mut self, action: &str, detail: Option<String>) -> Self {
        self.action = Some(action.to_string());
        self.detail = detail;
        self
    }
}

/// One record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Its place in the log: larger for a later record.
    pub id: i64,
    /// When the write was made.
    pub at: DateTime<Utc>,
    /// Who made it ([`Audit::actor`]).
    pub actor: String,
    /// The actor's role.
    pub role: String,
    /// The client's address, if known.
    pub source: Option<String>,
    /// The request's id.
    pub request_id: String,
    /// `create`, `update`, `delete`, `revoke`, `forget`, `add-credential`,
    /// `revoke-credential`.
    pub action: String,
    /// The kind written (`api`, `certificate`, `consumer`, `enrollment-token`,
    /// `admin-token`, `runtime`).
    pub kind: String,
    /// The name (or id) of what was written.
    pub name: String,
    /// A word more ([`Audit::detail`]).
    pub detail: Option<String>,
    /// The revision of a resource write.
    pub revision: Option<i64>,
    /// [`digest`] of the stored definition before the write (none for a create).
    pub before: Option<String>,
    /// [`digest`] of the stored definition after it (none for a delete).
    pub after: Option<String>,
}

impl AuditRecord {
    /// The record `audit` makes of a write to `kind` `name` at `at`, whose action is
    /// `action` unless `audit` names one; without an id (the insert gives it), a revision or
    /// digests.
    pub(crate) fn of(
        audit: &Audit,
        action: &str,
        kind: &str,
        name: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: 0,
            at,
            actor: audit.actor.clone(),
            role: audit.role.clone(),
            source: audit.source.clone(),
            request_id: audit.request_id.clone(),
            action: audit.action.clone().unwrap_or_else(|| action.to_string()),
            kind: kind.to_string(),
            name: name.to_string(),
            detail: audit.detail.clone(),
            revision: None,
            before: None,
            after: None,
        }
    }

    /// Logs the record as one JSON line (target [`LOG_TARGET`]).
    pub fn log(&self) {
        match serde_json::to_string(self) {
            Ok(record) => tracing::info!(target: LOG_TARGET, %record, "audit"),
            Err(err) => {
                tracing::warn!(target: LOG_TARGET, error = %err, id = self.id, "audit record not logged");
            }
        }
    }
}

/// What [`crate::Store::list_audit`] reads: the newest records first, filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only of this kind.
    pub kind: Option<String>,
    /// Only of this name.
    pub name: Option<String>,
    /// Only records older than this one (the cursor of the next page).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            since: None,
            actor: None,
            kind: None,
            name: None,
            before_id: None,
            limit: 100,
        }
    }
}

/// The digest of a stored definition: `sha256:` and the hex SHA-256 of its canonical JSON
/// (object keys sorted, no spaces), so that equal definitions have equal digests whichever
/// database kept them.
#[must_use]
pub fn digest(spec: &serde_json::Value) -> String {
    let mut text = String::new();
    canonical(spec, &mut text);
    let hash = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_ignores_key_order_and_follows_content() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, "x"]}, "b": 1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&serde_json::json!({"b": 2, "a": {}})));
        let d = digest(&a);
        assert!(d.starts_with("sha256:") && d.len() == 7 + 64, "{d}");
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_record_is_logged_as_one_json_line_of_its_target() {
        let audit = Audit {
            actor: "ci".into(),
            role: "operator".into(),
            source: Some("192.0.2.1".into()),
            request_id: "r-1".into(),
            action: None,
            detail: None,
        };
        let mut record = AuditRecord::of(&audit, "create", "api", "pets", Utc::now());
        record.id = 7;
        record.after = Some(digest(&serde_json::json!({"a": 1})));
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || record.log());
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["target"], LOG_TARGET);
        assert_eq!(line["level"], "INFO");
        let logged: serde_json::Value =
            serde_json::from_str(line["fields"]["record"].as_str().unwrap()).unwrap();
        assert_eq!(logged, serde_json::to_value(&record).unwrap());
        assert_eq!(logged["requestId"], "r-1");
    }
}
