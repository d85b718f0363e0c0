//! The `Consumer` document: a client of the APIs (an application, a partner, a user), its
//! ACL groups, and the credentials it authenticates with.
//!
//! Secrets are never stored or synced in the clear: an API key is kept as its SHA-256
//! (`keyHash`), a password as an argon2id hash (`passwordHash`; bcrypt and other argon2
//! hashes are accepted, for imports). A document may carry the clear values (`key`,
//! `password`); [`crate::credential::seal`] replaces them with their hashes, which is what
//! the controller stores and what runtimes receive. `Debug` output shows no secret and no
//! hash.
//!
//! This module describes and validates credentials; it hashes nothing slowly: password
//! hashing (argon2, bcrypt) is [`crate::credential`]'s, behind the `basic-auth` feature.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{FieldError, Metadata, ModelError, default_groups, deserialize_document};

/// The `kind` of a consumer document.
pub const KIND_CONSUMER: &str = "Consumer";
/// The most credentials one consumer may have.
pub const MAX_CREDENTIALS: usize = 64;
/// The most ACL groups one consumer may be in.
const MAX_ACL_GROUPS: usize = 64;
/// The shortest API key accepted when the operator supplies it.
pub const MIN_KEY_LEN: usize = 16;
const MAX_KEY_LEN: usize = 512;
/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
const MAX_PASSWORD_LEN: usize = 1024;
const MAX_USERNAME_LEN: usize = 128;
const MAX_SUBJECT_LEN: usize = 512;
const KEY_HASH_PREFIX: &str = "sha256:";
/// The most memory an imported argon2 hash may ask per verification (64 MiB).
const MAX_ARGON2_MEMORY_KIB: u32 = 65_536;
const MAX_ARGON2_PASSES: u32 = 10;
const MAX_BCRYPT_COST: u32 = 14;

/// A consumer as deployed: `apiVersion`, `kind`, `metadata` and `spec`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "gw consumer")]
pub struct ConsumerDefinition {
    /// Always `gw/v1`.
    pub api_version: String,
    /// Always `Consumer`.
    pub kind: String,
    /// Identity and labels.
    pub metadata: Metadata,
    /// Groups, attributes and credentials.
    pub spec: ConsumerSpec,
}

/// The content of a consumer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Gateway groups whose runtimes receive the consumer (default `[default]`): those
    /// that serve the APIs it calls.
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    /// The consumer's ACL groups, which `acl` policies allow or deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl_groups: Vec<String>,
    /// The credentials it authenticates with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

/// The kinds of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialType {
    /// An API key, presented in a header or a query parameter (`api-key` policy).
    ApiKey,
    /// A user name and password, in `Authorization: Basic` (`basic-auth` policy).
    BasicAuth,
    /// A JWT whose claim (`sub` by default) names this consumer (`jwt` policy).
    Jwt,
}

impl CredentialType {
    /// The type's name in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::ApiKey => "api-key",
            CredentialType::BasicAuth => "basic-auth",
            CredentialType::Jwt => "jwt",
        }
    }
}

/// One credential. Which fields apply depends on `type`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Credential {
    /// `api-key`, `basic-auth` or `jwt`.
    #[serde(rename = "type")]
    pub kind: CredentialType,
    /// The credential's id, unique within the consumer (same rules as names): what
    /// revocation (`DELETE .../credentials/{id}`) and `rate-limit` with `key: credential`
    /// use.
    pub id: String,
    /// `api-key`: the key, in the clear. Write-only: stored as `keyHash`. Leave both `key`
    /// and `keyHash` out to have the controller generate a key (shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `api-key`: `sha256:` and the key's SHA-256 in lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// `basic-auth`: the user name (no `:`), unique across consumers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `basic-auth`: the password, in the clear. Write-only: stored as `passwordHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `basic-auth`: an argon2 (PHC string, `$argon2id$...`) or bcrypt (`$2b$...`) hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// `jwt`: the value of `claim` that names this consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `jwt`: the claim holding `subject` (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// `jwt`: when set, only tokens from this issuer (`iss`) match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl std::fmt::Debug for ConsumerDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerDefinition")
            .field("name", &self.metadata.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("groups", &self.groups)
            .field("acl_groups", &self.acl_groups)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never a secret, never a hash
        f.debug_struct("Credential")
            .field("type", &self.kind)
            .field("id", &self.id)
            .field("username", &self.username)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// A new API key: 32 random bytes, base64url, prefixed `gwk_` (so that secret scanners and
/// people can recognize it).
pub fn generate_api_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "gwk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of an API key, as looked up by the `api-key` policy.
pub fn api_key_digest(key: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(key).into()
}

/// `keyHash` for `key`.
pub fn api_key_hash(key: &str) -> String {
    let digest = api_key_digest(key.as_bytes());
    let mut text = String::with_capacity(KEY_HASH_PREFIX.len() + 64);
    text.push_str(KEY_HASH_PREFIX);
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Parses a `keyHash` back into its digest.
pub fn parse_key_hash(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.strip_prefix(KEY_HASH_PREFIX)?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// Whether `hash` looks like a bcrypt hash (`$2a$`, `$2b$` or `$2y$`).
pub(crate) fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Whether `hash` is a password hash this release can verify.
fn check_password_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with("$argon2") {
        // the PHC string format only: no argon2 here (see `crate::credential`)
        let parsed = password_hash::PasswordHash::new(hash)
            .map_err(|e| format!("not a valid argon2 PHC string: {e}"))?;
        if !matches!(
            parsed.algorithm.as_str(),
            "argon2d" | "argon2i" | "argon2id"
        ) {
            return Err("unknown argon2 variant".to_string());
        }
        // every login attempt pays this cost: bound it
        let param = |name: &str| parsed.params.get_decimal(name).unwrap_or(u32::MAX);
        if param("m") > MAX_ARGON2_MEMORY_KIB || param("t") > MAX_ARGON2_PASSES || param("p") > 4 {
            return Err(format!(
                "argon2 parameters above the limits (m <= {MAX_ARGON2_MEMORY_KIB}, t <= {MAX_ARGON2_PASSES}, p <= 4)"
            ));
        }
        Ok(())
    } else if is_bcrypt(hash) {
        // $2b$<cost>$<53 characters of salt and hash>
        let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
        if hash.len() == 60
            && hash.as_bytes()[6] == b'$'
            && cost.is_some_and(|c| (4..=MAX_BCRYPT_COST).contains(&c))
        {
            Ok(())
        } else {
            Err(format!(
                "not a valid bcrypt hash (cost 4 to {MAX_BCRYPT_COST})"
            ))
        }
    } else {
        Err("must be an argon2 ($argon2id$...) or bcrypt ($2b$...) hash".to_string())
    }
}

impl ConsumerDefinition {
    /// Deserializes and validates a parsed document. Clear secrets are accepted (see
    /// [`crate::credential::seal`]); api-key credentials without a key are reported unless
    /// `allow_missing_keys` (the controller generates those).
    pub fn from_value_validated(
        value: &serde_json::Value,
        allow_missing_keys: bool,
    ) -> Result<Self, ModelError> {
        let (definition, mut errors) = deserialize_document::<Self>(value);
        let Some(definition) = definition else {
            return Err(ModelError::Invalid(errors));
        };
        errors.extend(super::validate::validate_consumer(
            &definition,
            allow_missing_keys,
        ));
        if errors.is_empty() {
            Ok(definition)
        } else {
            Err(ModelError::Invalid(errors))
        }
    }

    /// Whether every secret is hashed (what runtimes require from a controller).
    pub fn is_sealed(&self) -> bool {
        self.spec
            .credentials
            .iter()
            .all(|c| c.key.is_none() && c.password.is_none())
    }

    /// The definition as canonical JSON, the form stored and sent to runtimes (after
    /// [`crate::credential::seal`]).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The definition as the admin API shows it: without hashes (and without clear
    /// secrets, which a sealed definition does not have anyway).
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut value = self.to_json();
        if let Some(credentials) = value
            .pointer_mut("/spec/credentials")
            .and_then(|c| c.as_array_mut())
        {
            for credential in credentials {
                if let Some(fields) = credential.as_object_mut() {
                    for secret in ["key", "keyHash", "password", "passwordHash"] {
                        fields.remove(secret);
                    }
                }
            }
        }
        value
    }
}

/// The checks of a consumer's spec beyond its groups: ACL groups and credentials, with
/// their field paths.
pub(super) fn check_spec(spec: &ConsumerSpec, allow_missing_keys: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError::new(field, message));
    if spec.acl_groups.len() > MAX_ACL_GROUPS {
        err(
            "spec.aclGroups".into(),
            format!("more than {MAX_ACL_GROUPS} groups"),
        );
    }
    let mut seen = HashSet::new();
    for (i, group) in spec.acl_groups.iter().enumerate() {
        if let Err(message) = super::validate_name(group) {
            err(format!("spec.aclGroups[{i}]"), message);
        } else if !seen.insert(group.as_str()) {
            err(
                format!("spec.aclGroups[{i}]"),
                format!("{group:?} is listed twice"),
            );
        }
    }
    if spec.credentials.len() > MAX_CREDENTIALS {
        err(
            "spec.credentials".into(),
            format!("more than {MAX_CREDENTIALS} credentials"),
        );
    }
    let mut ids = HashSet::new();
    let mut claims: Vec<(CredentialClaim, usize)> = Vec::new();
    for (i, credential) in spec.credentials.iter().enumerate() {
        let field = |name: &str| format!("spec.credentials[{i}].{name}");
        // the same key, user name or subject twice in one consumer: one would silently
        // shadow the other
        if let Some(claim) = credential.claim() {
            if let Some((_, first)) = claims.iter().find(|(c, _)| *c == claim) {
                err(
                    format!("spec.credentials[{i}]"),
                    format!("{} is already spec.credentials[{first}]", claim.describe()),
                );
            } else {
                claims.push((claim, i));
            }
        }
        if let Err(message) = super::validate_name(&credential.id) {
            err(field("id"), message);
        } else if !ids.insert(credential.id.as_str()) {
            err(field("id"), format!("{:?} is used twice", credential.id));
        }
        let kind = credential.kind.as_str();
        let present: [(&str, bool); 8] = [
            ("key", credential.key.is_some()),
            ("keyHash", credential.key_hash.is_some()),
            ("username", credential.username.is_some()),
            ("password", credential.password.is_some()),
            ("passwordHash", credential.password_hash.is_some()),
            ("subject", credential.subject.is_some()),
            ("claim", credential.claim.is_some()),
            ("issuer", credential.issuer.is_some()),
        ];
        let allowed: &[&str] = match credential.kind {
            CredentialType::ApiKey => &["key", "keyHash"],
            CredentialType::BasicAuth => &["username", "password", "passwordHash"],
            CredentialType::Jwt => &["subject", "claim", "issuer"],
        };
        for (name, is_present) in present {
            if is_present && !allowed.contains(&name) {
                err(field(name), format!("not a field of {kind} credentials"));
            }
        }
        match credential.kind {
            CredentialType::ApiKey => match (&credential.key, &credential.key_hash) {
                (Some(_), Some(_)) => err(field("keyHash"), "give key or keyHash, not both".into()),
                (Some(key), None) => {
                    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
                        err(
                            field("key"),
                            format!("must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters"),
                        );
                    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
                        err(
                            field("key"),
                            "must be visible ASCII characters, without spaces".into(),
                        );
                    }
                }
                (None, Some(hash)) => {
                    if parse_key_hash(hash).is_none() {
                        err(
                            field("keyHash"),
                            "must be \"sha256:\" and 64 lowercase hex digits".into(),
                        );
                    }
                }
                (None, None) => {
                    if !allow_missing_keys {
                        err(
                            field("key"),
                            "an api-key credential needs key or keyHash".into(),
                        );
                    }
                }
            },
            CredentialType::BasicAuth => {
                match &credential.username {
                    None => err(
                        field("username"),
                        "a basic-auth credential needs a username".into(),
                    ),
                    Some(username) => {
                        if username.is_empty() || username.len() > MAX_USERNAME_LEN {
                            err(
                                field("username"),
                                format!("must be 1 to {MAX_USERNAME_LEN} characters"),
                            );
                        } else if username.contains(':') || username.chars().any(char::is_control) {
                            err(
                                field("username"),
                                "must not contain ':' or control characters".into(),
                            );
                        }
                    }
                }
                match (&credential.password, &credential.password_hash) {
                    (Some(_), Some(_)) => err(
                        field("passwordHash"),
                        "give password or passwordHash, not both".into(),
                    ),
                    (Some(password), None) => {
                        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
                            err(
                                field("password"),
                                format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes"),
                            );
                        }
                    }
                    (None, Some(hash)) => {
                        if let Err(message) = check_password_hash(hash) {
                            err(field("passwordHash"), message);
                        }
                    }
                    (None, None) => err(
                        field("password"),
                        "a basic-auth credential needs password or passwordHash".into(),
                    ),
                }
            }
            CredentialType::Jwt => {
                match &credential.subject {
                    Some(subject)
                        if !subject.is_empty()
                            && subject.len() <= MAX_SUBJECT_LEN
                            && !subject.chars().any(char::is_control) => {}
                    Some(_) => err(
                        field("subject"),
                        format!("must be 1 to {MAX_SUBJECT_LEN} characters, no control characters"),
                    ),
                    None => err(field("subject"), "a jwt credential needs a subject".into()),
                }
                if let Some(claim) = &credential.claim
                    && (claim.is_empty()
                        || claim.len() > 128
                        || claim.chars().any(char::is_control))
                {
                    err(field("claim"), "must be 1 to 128 characters".into());
                }
                if let Some(issuer) = &credential.issuer
                    && (issuer.is_empty() || issuer.len() > 1024)
                {
                    err(field("issuer"), "must be 1 to 1024 characters".into());
                }
            }
        }
    }
    errors
}

/// What two consumers may not share: an API key, a basic-auth user name, a JWT subject
/// (with its claim and issuer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialClaim {
    /// An API key's digest.
    ApiKey([u8; 32]),
    /// A basic-auth user name.
    Username(String),
    /// A JWT claim, its value and the issuer it is bound to.
    Subject {
        /// The claim's name.
        claim: String,
        /// Its value.
        subject: String,
        /// The issuer, if bound to one.
        issuer: Option<String>,
    },
}

impl CredentialClaim {
    /// What the claim is, for error messages (never the key).
    pub fn describe(&self) -> String {
        match self {
            CredentialClaim::ApiKey(_) => "the same API key".to_string(),
            CredentialClaim::Username(name) => format!("the basic-auth user name {name:?}"),
            CredentialClaim::Subject { claim, subject, .. } => {
                format!("the JWT {claim} {subject:?}")
            }
        }
    }
}

impl Credential {
    /// What this credential claims, once sealed (`None` for an api-key without a hash).
    pub fn claim(&self) -> Option<CredentialClaim> {
        match self.kind {
            CredentialType::ApiKey => self
                .key_hash
                .as_deref()
                .and_then(parse_key_hash)
                .or_else(|| self.key.as_deref().map(|k| api_key_digest(k.as_bytes())))
                .map(CredentialClaim::ApiKey),
            CredentialType::BasicAuth => self.username.clone().map(CredentialClaim::Username),
            CredentialType::Jwt => self
                .subject
                .clone()
                .map(|subject| CredentialClaim::Subject {
                    claim: self.claim.clone().unwrap_or_else(|| "sub".to_string()),
                    subject,
                    issuer: self.issuer.clone(),
                }),
        }
    }
}

/// Every credential claimed by more than one consumer: (claim, the consumers' names).
pub fn conflicting_claims<'a>(
    consumers: impl IntoIterator<Item = &'a ConsumerDefinition>,
) -> Vec<(CredentialClaim, Vec<String>)> {
    let mut owners: BTreeMap<CredentialClaim, Vec<String>> = BTreeMap::new();
    for consumer in consumers {
        for credential in &consumer.spec.credentials {
            if let Some(claim) = credential.claim() {
                let names = owners.entry(claim).or_default();
                if !names.contains(&consumer.metadata.name) {
                    names.push(consumer.metadata.name.clone());
                }
            }
        }
    }
    owners
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // json! literals read better passed by value
    fn parse(
        spec: serde_json::Value,
        allow_missing_keys: bool,
    ) -> Result<ConsumerDefinition, ModelError> {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"}, "spec": spec
        });
        ConsumerDefinition::from_value_validated(&value, allow_missing_keys)
    }

    fn fields(result: Result<ConsumerDefinition, ModelError>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(ModelError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn credentials_are_validated_with_paths() {
        let got = fields(parse(
            serde_json::json!({
                "aclGroups": ["gold", "gold", "Bad"],
                "credentials": [
                    {"type": "api-key", "id": "k", "key": "short"},
                    {"type": "api-key", "id": "k", "keyHash": "md5:abc", "username": "x"},
                    {"type": "basic-auth", "id": "b", "username": "a:b", "password": "p"},
                    {"type": "basic-auth", "id": "c", "username": "c", "passwordHash": "plain"},
                    {"type": "jwt", "id": "j"},
                    {"type": "api-key", "id": "g"},
                    {"type": "oauth", "id": "o"}
                ]
            }),
            false,
        ));
        assert_eq!(
            got,
            ["spec.credentials[6].type"],
            "a type error stops parsing"
        );
        let got = fields(parse(
            serde_json::json!({
                "aclGroups": ["gold", "gold", "Bad"],
                "credentials": [
                    {"type": "api-key", "id": "k", "key": "short"},
                    {"type": "api-key", "id": "k", "keyHash": "md5:abc", "username": "x"},
                    {"type": "basic-auth", "id": "b", "username": "a:b", "password": "p"},
                    {"type": "basic-auth", "id": "c", "username": "c", "passwordHash": "plain"},
                    {"type": "jwt", "id": "j"},
                    {"type": "api-key", "id": "g"}
                ]
            }),
            false,
        ));
        assert_eq!(
            got,
            [
                "spec.aclGroups[1]",
                "spec.aclGroups[2]",
                "spec.credentials[0].key",
                "spec.credentials[1].id",
                "spec.credentials[1].username",
                "spec.credentials[1].keyHash",
                "spec.credentials[2].username",
                "spec.credentials[2].password",
                "spec.credentials[3].passwordHash",
                "spec.credentials[4].subject",
                "spec.credentials[5].key",
            ]
        );
        // the controller generates missing keys
        assert!(
            parse(
                serde_json::json!({"credentials": [{"type": "api-key", "id": "g"}]}),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn a_credential_is_not_repeated_within_a_consumer() {
        let got = fields(parse(
            serde_json::json!({"credentials": [
                {"type": "basic-auth", "id": "a", "username": "ops", "password": "password-1"},
                {"type": "basic-auth", "id": "b", "username": "ops", "password": "password-2"},
                {"type": "api-key", "id": "c", "key": "same-key-0123456789"},
                {"type": "api-key", "id": "d", "keyHash": api_key_hash("same-key-0123456789")}
            ]}),
            false,
        ));
        assert_eq!(got, ["spec.credentials[1]", "spec.credentials[3]"]);
    }

    #[test]
    fn errors_never_quote_a_credential() {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
            "spec": {"credentials": ["gwk_secret_value_0123456789"]}
        });
        let error = ConsumerDefinition::from_value_validated(&value, false)
            .unwrap_err()
            .redacted()
            .to_string();
        assert!(!error.contains("gwk_secret"), "{error}");
        assert!(error.contains("spec.credentials[0]"), "{error}");
    }

    #[test]
    fn bcrypt_and_argon2_hashes_are_accepted_for_imports() {
        // bcrypt::hash("imported pw", 4)
        let hash = "$2b$04$Wx2K0nYy6oN3m3bPxJ1mMu1u0qH3yI6h4n1pq0XKQeVwz4yWn2m4K";
        assert!(check_password_hash(hash).is_ok());
        assert!(check_password_hash("$2b$04$short").is_err());
        // costs that would make every login attempt a denial of service
        let costly = hash.replacen("$2b$04$", "$2b$20$", 1);
        assert!(check_password_hash(&costly).is_err());
        let huge =
            "$argon2id$v=19$m=4194304,t=50,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo";
        assert!(check_password_hash(huge).unwrap_err().contains("limits"));
        let argon2id =
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo";
        assert!(check_password_hash(argon2id).is_ok());
        let unknown = argon2id.replacen("argon2id", "argon2x", 1);
        assert!(
            check_password_hash(&unknown)
                .unwrap_err()
                .contains("variant")
        );
        assert!(check_password_hash("$argon2id$v=19$m=19456").is_err());
        assert!(check_password_hash("$md5$nope").is_err());
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert!(a.starts_with("gwk_") && a.len() == 47, "{a}");
        assert_ne!(a, b);
    }
}
