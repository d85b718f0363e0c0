//! The protocol between gw controllers and runtimes.
//!
//! - [`proto`]: the generated messages and gRPC service (`proto/gw/sync/v1/sync.proto`,
//!   compiled at build time by protox, so no `protoc` is needed).
//! - [`state`]: the desired state a controller serves and the per-group deltas computed
//!   from it.
//! - [`server`]: one session per runtime stream: Hello, then a Snapshot or Delta, then one
//!   message per change, each acknowledged; heartbeats both ways; fleet events reported to
//!   a [`server::FleetObserver`].
//! - [`client`]: the runtime side: connects to any of several controllers, resumes from its
//!   applied revision, reconnects with backoff and jitter, and hands configurations to an
//!   [`client::Applier`].
#![warn(missing_docs)]

pub mod client;
pub mod enroll;
pub mod pki;
pub mod secret;
pub mod server;
pub mod state;
pub mod tls;

/// The generated protocol types.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("gw.sync.v1");
}

/// The newest version of the sync protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest version of the sync protocol this build speaks. A controller and a runtime
/// speak the newest version in both their ranges ([`negotiate`]); a release speaks the
/// version of the release before it too, so that a rolling upgrade (controllers first, then
/// runtimes, or the other way round) never leaves a runtime unserved.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The version a controller speaking `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` speaks with a
/// runtime that speaks `runtime_min..=runtime_max` (a `runtime_min` of 0: `runtime_max`
/// only, as runtimes before version negotiation): the newest in both ranges, or why there is
/// none, naming the side to upgrade.
pub fn negotiate(runtime_min: u32, runtime_max: u32) -> Result<u32, String> {
    let runtime_min = if runtime_min == 0 {
        runtime_max
    } else {
        runtime_min
    };
    let chosen = runtime_max.min(PROTOCOL_VERSION);
    if runtime_min <= runtime_max && chosen >= runtime_min.max(MIN_PROTOCOL_VERSION) {
        return Ok(chosen);
    }
    let ours = if MIN_PROTOCOL_VERSION == PROTOCOL_VERSION {
        format!("{PROTOCOL_VERSION}")
    } else {
        format!("{MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")
    };
    let theirs = if runtime_min == runtime_max {
        format!("{runtime_max}")
    } else {
        format!("{runtime_min} to {runtime_max}")
    };
    let upgrade = if runtime_max < MIN_PROTOCOL_VERSION {
        "upgrade the runtime"
    } else {
        "upgrade the controller"
    };
    Err(format!(
        "protocol version {theirs} is not supported by this controller (it speaks {ours}); \
         {upgrade}: a release speaks the protocol of the release before it too"
    ))
}

/// The kind of an API resource.
pub const KIND_API: &str = "api";
/// The kind of a TLS certificate resource.
pub const KIND_CERTIFICATE: &str = "certificate";
/// The kind of a consumer resource (sent sealed: keys and passwords as hashes only).
pub const KIND_CONSUMER: &str = "consumer";

/// Every resource kind the sync protocol carries: what a controller sends and a bundle holds,
/// and what a runtime of this version applies, declares to controllers and lists in its
/// cache. A cache that lacks one of them is served, but its revision is not trusted for a
/// delta (the resources of the missing kind made before it were never sent).
pub const KINDS: [&str; 3] = [KIND_API, KIND_CERTIFICATE, KIND_CONSUMER];

/// The largest message either side accepts: a Snapshot holds a whole group's configuration.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The shared secret that runtimes present to controllers (`Authorization: Bearer …` in the
/// stream's metadata). Its `Debug` output is redacted; it is compared in constant time.
#[derive(Clone)]
pub struct SyncToken(String);

impl std::fmt::Debug for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncToken(<redacted>)")
    }
}

/// The shortest sync token accepted, in characters (as for `GW_ADMIN_TOKEN`).
pub const MIN_TOKEN_LEN: usize = 16;

/// A sync token shorter than [`MIN_TOKEN_LEN`]: controllers and runtimes refuse to start with
/// one, since a short shared secret can be guessed by anyone who reaches the sync port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "GW_SYNC_TOKEN is {0} characters long; it must have at least {MIN_TOKEN_LEN}. Set it to a \
     random string (for example: openssl rand -hex 32), the same on every controller and runtime"
)]
pub struct WeakSyncToken(usize);

impl SyncToken {
    /// Wraps a token: `None` for an empty or blank one (no token), an error for one shorter
    /// than [`MIN_TOKEN_LEN`] characters (surrounding blanks are not counted).
    pub fn new(token: &str) -> Result<Option<Self>, WeakSyncToken> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(None);
        }
        let chars = token.chars().count();
        if chars < MIN_TOKEN_LEN {
            return Err(WeakSyncToken(chars));
        }
        Ok(Some(Self(token.to_string())))
    }

    /// The metadata value a client sends.
    fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `header` (the `authorization` metadata value) carries this token.
    fn verify(&self, header: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let presented = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        let expected: [u8; 32] = Sha256::digest(self.0.as_bytes()).into();
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&expected).into()
    }
}

/// Checks a runtime's node id: 1 to 253 letters, digits, `-`, `_`, `.` or `:`.
pub fn validate_node_id(node_id: &str) -> Result<(), String> {
    let valid = !node_id.is_empty()
        && node_id.len() <= 253
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if valid {
        Ok(())
    } else {
        let shown = clip(node_id, 64);
        let cut = if shown.len() < node_id.len() {
            "..."
        } else {
            ""
        };
        Err(format!(
            "invalid node id {shown:?}{cut}: use 1 to 253 letters, digits, '-', '_', '.' or ':'"
        ))
    }
}

/// Checks a runtime's gateway group, as its Hello names it: 1 to 63 lowercase letters,
/// digits and `-`, starting and ending with a letter or digit (a DNS label).
///
/// This is the rule of every name of gw's model (`gw_core::model::validate_name`), which
/// API definitions' groups follow: a group that API definitions can name is one a runtime
/// may serve, and nothing else. The rule is restated here so that the protocol does not
/// need the proxy's crate (gw-core) for it; gw-controller, which depends on both, checks
/// that the two agree (its test `runtime_groups_follow_the_models_name_rule`).
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("must not be empty".to_string());
    }
    if group.len() > MAX_GROUP_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_GROUP_LEN}",
            group.len()
        ));
    }
    let bytes = group.as_bytes();
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !bytes.iter().all(|&b| ok(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(format!(
            "{group:?} is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// The longest group name, in bytes.
const MAX_GROUP_LEN: usize = 63;

/// `text` cut to at most `max` characters, for a client-controlled string that reaches a
/// log, an error or the fleet view.
pub fn clip(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(end, _)| &text[..end])
}

/// Milliseconds since the Unix epoch by the system clock (0 for a clock set before it), for
/// heartbeats, session starts and anything else a process of gw stamps with wall-clock time.
///
/// ```
/// assert!(gw_sync::unix_millis() > 1_600_000_000_000, "after September 2020");
/// ```
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{
        MIN_PROTOCOL_VERSION, MIN_TOKEN_LEN, PROTOCOL_VERSION, SyncToken, WeakSyncToken, clip,
        negotiate, validate_group, validate_node_id,
    };

    #[test]
    fn the_newest_version_both_speak_is_spoken() {
        let (min, max) = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        // a runtime of this release, and one before negotiation (its one version)
        assert_eq!(negotiate(min, max), Ok(max));
        assert_eq!(negotiate(0, max), Ok(max));
        // a runtime of the next release, which speaks this one's version too
        assert_eq!(negotiate(max, max + 1), Ok(max));
        // one that no longer speaks it: the controller is the one to upgrade
        let err = negotiate(max + 1, max + 2).unwrap_err();
        assert!(err.contains("upgrade the controller"), "{err}");
        assert!(
            err.contains(&format!("{} to {}", max + 1, max + 2)),
            "{err}"
        );
        // one older than this release speaks: the runtime is
        let err = negotiate(0, min - 1).unwrap_err();
        assert!(err.contains("upgrade the runtime"), "{err}");
        // a range upside down speaks nothing
        assert!(negotiate(max + 1, max).is_err());
    }

    #[test]
    fn a_sync_token_has_a_minimum_length() {
        assert!(SyncToken::new("").unwrap().is_none());
        assert!(SyncToken::new("   ").unwrap().is_none());
        assert_eq!(SyncToken::new("short").unwrap_err(), WeakSyncToken(5));
        // blanks around it do not count
        let fifteen = format!("  {}  ", "x".repeat(MIN_TOKEN_LEN - 1));
        let err = SyncToken::new(&fifteen).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        assert!(
            !err.to_string().contains("xxx"),
            "the token is not quoted: {err}"
        );
        let token = SyncToken::new(&"y".repeat(MIN_TOKEN_LEN)).unwrap().unwrap();
        assert!(token.verify(&format!("Bearer {}", "y".repeat(MIN_TOKEN_LEN))));
        assert!(!token.verify("Bearer yyyy"));
        assert_eq!(format!("{token:?}"), "SyncToken(<redacted>)");
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("rt-1", 64), "rt-1");
        assert_eq!(clip("ééé", 2), "éé");
        assert_eq!(clip("", 3), "");
    }

    #[test]
    fn an_invalid_node_id_is_quoted_cut_short() {
        let long = "x y".repeat(100);
        let err = validate_node_id(&long).unwrap_err();
        assert!(err.contains(&format!("{:?}...", clip(&long, 64))), "{err}");
        assert!(err.len() < 200, "{err}");
        assert!(validate_node_id("rt-1.example:7").is_ok());
    }

    #[test]
    fn a_group_is_a_dns_label() {
        for group in ["default", "eu-west-1", "a", "0", &"a".repeat(63)] {
            assert!(validate_group(group).is_ok(), "{group}");
        }
        for (group, reason) in [
            ("", "must not be empty"),
            (
                &"a".repeat(64) as &str,
                "is 64 characters long; the limit is 63",
            ),
            ("-edge", "not a valid name"),
            ("edge-", "not a valid name"),
            ("Edge", "not a valid name"),
            ("edge_1", "not a valid name"),
            ("edge.1", "not a valid name"),
            ("é", "not a valid name"),
        ] {
            let err = validate_group(group).unwrap_err();
            assert!(err.contains(reason), "{group:?}: {err}");
        }
    }
}
