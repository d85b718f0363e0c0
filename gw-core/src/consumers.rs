//! The consumers a gateway serves, indexed by the credentials they present, and the store
//! through which authentication policies read the current set.
//!
//! Authentication policies do not keep a copy of the consumers: they read the
//! [`ConsumerStore`] of their gateway per request (one lock-free load), so a new set (a
//! credential added or revoked) takes effect with the configuration that carries it,
//! without rebuilding any policy.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;

use crate::extensions::Consumer;
use crate::model::{
    ConsumerDefinition, CredentialClaim, CredentialType, conflicting_claims, parse_key_hash,
};

/// A basic-auth credential: its consumer and its password hash (never in `Debug`).
#[derive(Clone)]
pub struct PasswordCredential {
    /// Who it authenticates.
    pub consumer: Consumer,
    /// The argon2 or bcrypt hash of its password.
    pub hash: Arc<str>,
}

impl std::fmt::Debug for PasswordCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCredential")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ConsumerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("ConsumerSet")
            .field("consumers", &names)
            .field("api_keys", &self.api_keys.len())
            .field("users", &self.users.len())
            .field("subjects", &self.subjects.len())
            .finish_non_exhaustive()
    }
}

/// A JWT subject binding.
#[derive(Debug, Clone)]
struct SubjectBinding {
    issuer: Option<String>,
    consumer: Consumer,
}

/// The consumers of one configuration, indexed by credential. `Debug` shows names and
/// counts, never a key digest or a password hash.
#[derive(Default)]
pub struct ConsumerSet {
    by_name: HashMap<String, Arc<ConsumerDefinition>>,
    api_keys: HashMap<[u8; 32], Consumer>,
    users: HashMap<String, PasswordCredential>,
    /// (claim, subject) -> bindings, the issuer-bound ones first.
    subjects: HashMap<(String, String), Vec<SubjectBinding>>,
    /// The claims that `subjects` binds, `sub` first, then by name.
    subject_claims: Vec<String>,
}

impl ConsumerSet {
    /// Indexes `definitions`, which must be sealed (no clear secret). Two consumers that
    /// claim the same credential (an API key, a user name, a JWT subject) make the whole
    /// set invalid: authentication must never be ambiguous.
    pub fn build(
        definitions: impl IntoIterator<Item = Arc<ConsumerDefinition>>,
    ) -> Result<Self, Vec<String>> {
        let definitions: Vec<Arc<ConsumerDefinition>> = definitions.into_iter().collect();
        let mut errors: Vec<String> = conflicting_claims(definitions.iter().map(AsRef::as_ref))
            .into_iter()
            .map(|(claim, names)| {
                format!(
                    "consumers {} share {}",
                    names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    claim.describe()
                )
            })
            .collect();
        let mut set = Self::default();
        for definition in definitions {
            let name = definition.metadata.name.clone();
            if !definition.is_sealed() {
                errors.push(format!(
                    "consumer {name:?} carries a secret in the clear; seal it first"
                ));
                continue;
            }
            let acl_groups: Arc<[String]> = Arc::from(definition.spec.acl_groups.clone());
            let consumer_name: Arc<str> = Arc::from(name.as_str());
            for credential in &definition.spec.credentials {
                let consumer = Consumer {
                    name: Arc::clone(&consumer_name),
                    groups: Arc::clone(&acl_groups),
                    credential: Some(Arc::from(credential.id.as_str())),
                };
                match (credential.kind, credential.claim()) {
                    (CredentialType::ApiKey, _) => {
                        match credential.key_hash.as_deref().and_then(parse_key_hash) {
                            Some(digest) => {
                                set.api_keys.insert(digest, consumer);
                            }
                            None => errors.push(format!(
                                "consumer {name:?}: credential {:?} has no valid keyHash",
                                credential.id
                            )),
                        }
                    }
                    (CredentialType::BasicAuth, Some(CredentialClaim::Username(username))) => {
                        match &credential.password_hash {
                            Some(hash) => {
                                set.users.insert(
                                    username,
                                    PasswordCredential {
                                        consumer,
                                        hash: Arc::from(hash.as_str()),
                                    },
                                );
                            }
                            None => errors.push(format!(
                                "consumer {name:?}: credential {:?} has no passwordHash",
                                credential.id
                            )),
                        }
                    }
                    (
                        CredentialType::Jwt,
                        Some(CredentialClaim::Subject {
                            claim,
                            subject,
                            issuer,
                        }),
                    ) => {
                        let bindings = set.subjects.entry((claim, subject)).or_default();
                        bindings.push(SubjectBinding { issuer, consumer });
                        bindings.sort_by_key(|b| b.issuer.is_none());
                    }
                    _ => errors.push(format!(
                        "consumer {name:?}: credential {:?} is incomplete",
                        credential.id
                    )),
                }
            }
            set.by_name.insert(name, definition);
        }
        let mut claims: Vec<String> = set.subjects.keys().map(|(c, _)| c.clone()).collect();
        claims.sort_by(|a, b| (a != "sub", a).cmp(&(b != "sub", b)));
        claims.dedup();
        set.subject_claims = claims;
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Validates, seals ([`crate::credential::seal`]: keys and passwords hashed) and
    /// indexes consumer documents, as written for the admin API: what a service that uses
    /// gw's authentication layers without a controller needs. Every problem is reported,
    /// each with its document's index.
    ///
    /// ```
    /// use gw_core::consumers::ConsumerSet;
    ///
    /// let set = ConsumerSet::from_documents([serde_json::json!({
    ///     "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "alice"},
    ///     "spec": {"credentials": [{"type": "api-key", "id": "k1", "key": "alice-key-0123456789"}]}
    /// })])
    /// .unwrap();
    /// assert_eq!(&*set.by_api_key(b"alice-key-0123456789").unwrap().name, "alice");
    /// ```
    pub fn from_documents(
        documents: impl IntoIterator<Item = serde_json::Value>,
    ) -> Result<Self, Vec<String>> {
        let mut definitions = Vec::new();
        let mut errors = Vec::new();
        for (i, document) in documents.into_iter().enumerate() {
            let sealed = ConsumerDefinition::from_value_validated(&document, false)
                // never quoting a key or a password
                .map_err(|e| e.redacted().to_string())
                .and_then(|mut definition| {
                    crate::credential::seal(&mut definition).map_err(|e| e.to_string())?;
                    Ok(definition)
                });
            match sealed {
                Ok(definition) => definitions.push(Arc::new(definition)),
                Err(error) => errors.push(format!("consumer document {i}: {error}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::build(definitions)
    }

    /// The consumer whose API key is `key`.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Consumer> {
        self.api_keys.get(&crate::model::api_key_digest(key))
    }

    /// The basic-auth credential of `username`.
    pub fn by_username(&self, username: &str) -> Option<&PasswordCredential> {
        self.users.get(username)
    }

    /// The consumer bound to `subject` in `claim`, for a token from `issuer`: a binding to
    /// that issuer, or else one bound to no issuer.
    pub fn by_subject(
        &self,
        claim: &str,
        subject: &str,
        issuer: Option<&str>,
    ) -> Option<&Consumer> {
        self.subjects
            .get(&(claim.to_string(), subject.to_string()))?
            .iter()
            .find(|b| b.issuer.is_none() || b.issuer.as_deref() == issuer)
            .map(|b| &b.consumer)
    }

    /// The JWT claims that some consumer's `jwt` credential binds, `sub` first, then by
    /// name: the claims a `jwt` policy looks up with [`ConsumerSet::by_subject`].
    pub fn subject_claims(&self) -> &[String] {
        &self.subject_claims
    }

    /// A consumer by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ConsumerDefinition>> {
        self.by_name.get(name)
    }

    /// The consumers, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ConsumerDefinition>> {
        self.by_name.values()
    }

    /// How many consumers there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The consumer set a gateway serves, shared with its authentication policies.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStore(Arc<ArcSwap<ConsumerSet>>);

impl ConsumerStore {
    /// A store holding `set`.
    pub fn new(set: ConsumerSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(set)))
    }

    /// The current set (a lock-free load).
    pub fn load(&self) -> arc_swap::Guard<Arc<ConsumerSet>> {
        self.0.load()
    }

    /// Replaces the set.
    pub fn store(&self, set: Arc<ConsumerSet>) {
        self.0.store(set);
    }

    /// A store that stays empty, for validation and tests.
    pub fn empty() -> &'static ConsumerStore {
        static EMPTY: LazyLock<ConsumerStore> = LazyLock::new(ConsumerStore::default);
        &EMPTY
    }
}

// consumers with passwords
#[cfg(all(test, feature = "basic-auth"))]
mod tests {
    use super::*;
    use crate::model::{ConsumerDefinition, api_key_hash};

    #[allow(clippy::needless_pass_by_value)] // json! literals read better passed by value
    fn consumer(name: &str, credentials: serde_json::Value) -> Arc<ConsumerDefinition> {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": name},
            "spec": {"aclGroups": ["gold"], "credentials": credentials}
        });
        let mut definition = ConsumerDefinition::from_value_validated(&value, false).unwrap();
        crate::credential::seal(&mut definition).unwrap();
        Arc::new(definition)
    }

    #[test]
    fn credentials_are_indexed_and_conflicts_refused() {
        let alice = consumer(
            "alice",
            serde_json::json!([
                {"type": "api-key", "id": "k1", "key": "alice-key-0123456789"},
                {"type": "jwt", "id": "j1", "subject": "alice@idp"},
                {"type": "jwt", "id": "j2", "subject": "shared", "issuer": "https://a"}
            ]),
        );
        let bob = consumer(
            "bob",
            serde_json::json!([
                {"type": "api-key", "id": "k1", "keyHash": api_key_hash("bob-key-0123456789ab")},
                {"type": "jwt", "id": "j1", "subject": "shared"}
            ]),
        );
        let set = ConsumerSet::build([alice.clone(), bob.clone()]).unwrap();
        let found = set.by_api_key(b"alice-key-0123456789").unwrap();
        assert_eq!(&*found.name, "alice");
        assert_eq!(found.credential.as_deref(), Some("k1"));
        assert_eq!(&*found.groups, ["gold".to_string()]);
        assert_eq!(
            &*set.by_api_key(b"bob-key-0123456789ab").unwrap().name,
            "bob"
        );
        assert!(set.by_api_key(b"alice-key-012345678").is_none());
        assert_eq!(
            &*set.by_subject("sub", "alice@idp", None).unwrap().name,
            "alice"
        );
        // an issuer-bound subject wins for its issuer; the unbound one serves the others
        assert_eq!(
            &*set
                .by_subject("sub", "shared", Some("https://a"))
                .unwrap()
                .name,
            "alice"
        );
        assert_eq!(
            &*set
                .by_subject("sub", "shared", Some("https://b"))
                .unwrap()
                .name,
            "bob"
        );

        let thief = consumer(
            "thief",
            serde_json::json!([{"type": "api-key", "id": "k", "key": "alice-key-0123456789"}]),
        );
        let errors = ConsumerSet::build([alice, thief]).unwrap_err();
        assert_eq!(
            errors,
            ["consumers \"alice\" and \"thief\" share the same API key"]
        );
    }

    #[test]
    fn debug_output_shows_no_digest_and_no_hash() {
        let alice = consumer(
            "alice",
            serde_json::json!([
                {"type": "api-key", "id": "k1", "key": "alice-key-0123456789"},
                {"type": "basic-auth", "id": "b1", "username": "alice", "password": "correct horse"}
            ]),
        );
        let set = ConsumerSet::build([alice]).unwrap();
        let debug = format!("{set:?} {:?}", set.by_username("alice").unwrap());
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("argon2"), "{debug}");
        // the digest as a derived Debug would print it
        let digest = crate::model::api_key_digest(b"alice-key-0123456789");
        let shown = format!("{:?}", &digest[..4]);
        assert!(!debug.contains(shown.trim_end_matches(']')), "{debug}");
    }

    #[test]
    fn unsealed_consumers_are_refused() {
        let value = serde_json::json!({
            "apiVersion": "gw/v1", "kind": "Consumer", "metadata": {"name": "c"},
            "spec": {"credentials": [{"type": "api-key", "id": "k", "key": "c-key-0123456789abc"}]}
        });
        let definition = ConsumerDefinition::from_value_validated(&value, false).unwrap();
        let errors = ConsumerSet::build([Arc::new(definition)]).unwrap_err();
        assert!(errors[0].contains("in the clear"), "{errors:?}");
    }
}
