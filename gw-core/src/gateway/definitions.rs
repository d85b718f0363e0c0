//! From definitions as written (YAML or JSON, consumers with clear keys and passwords) to a
//! configuration served: [`Gateway::apply_definitions`] and [`Resources::from_set`].

use std::sync::Arc;

use super::{ApplyError, Gateway, GatewayConfig, Resources};
use crate::model::{self, ConsumerDefinition, DocumentSet, FieldError, Format, ModelError};

/// Why definitions could not be served; the gateway keeps the configuration it had.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// The text is not a valid set of definitions (every problem, with its path).
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// A consumer's clear key or password could not be hashed.
    #[error("consumer {consumer:?}: {problem}")]
    Credential {
        /// The consumer's name.
        consumer: String,
        /// The credential's field and what went wrong.
        problem: FieldError,
    },
    /// Hashing the credentials did not finish: the runtime is shutting down.
    #[error("hashing the consumers' credentials was cancelled")]
    Cancelled,
    /// The definitions are valid one by one, but the configuration they make was refused
    /// (a credential claimed by two consumers, a certificate that does not parse).
    #[error(transparent)]
    Rejected(#[from] ApplyError),
}

impl Resources {
    /// The resources of a parsed set ([`model::parse_set`]), ready to serve: consumers' clear
    /// keys and passwords are replaced by their hashes.
    ///
    /// Password hashing is slow by design (argon2, tens of milliseconds a password): this
    /// blocks, so call it before the async runtime starts, or from
    /// `tokio::task::spawn_blocking`, or use [`Gateway::apply_definitions`], which does.
    pub fn from_set(set: DocumentSet) -> Result<Self, DefinitionsError> {
        let DocumentSet {
            apis,
            certificates,
            mut consumers,
        } = set;
        seal_consumers(&mut consumers)?;
        Ok(Self {
            apis: apis.into_iter().map(Arc::new).collect(),
            certificates: certificates.into_iter().map(Arc::new).collect(),
            consumers: consumers.into_iter().map(Arc::new).collect(),
        })
    }
}

/// Hashes the clear keys and passwords of `consumers`, in place: the one place where the
/// gateway seals credentials.
fn seal_consumers(consumers: &mut [ConsumerDefinition]) -> Result<(), DefinitionsError> {
    for consumer in consumers {
        crate::credential::seal(consumer).map_err(|problem| DefinitionsError::Credential {
            consumer: consumer.metadata.name.clone(),
            problem,
        })?;
    }
    Ok(())
}

impl Gateway {
    /// Parses a set of definitions (`kind: Api`, `Certificate` and `Consumer` documents: a
    /// YAML stream separated by `---`, a JSON array, or one document), validates it against
    /// this gateway's policies, hashes its consumers' clear credentials off the async
    /// threads, and serves it at `revision`: the one call an embedder needs to serve a file.
    /// On error, the configuration served stays.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use gw_core::Gateway;
    /// use gw_core::metrics::ProxyMetrics;
    /// use gw_core::model::Format;
    /// use gw_core::policy::PolicyRegistry;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gateway = Arc::new(Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered()));
    /// let definitions = r#"
    /// apiVersion: gw/v1
    /// kind: Api
    /// metadata: {name: orders}
    /// spec:
    ///   context: /orders
    ///   upstream: {endpoints: [{url: 'http://127.0.0.1:9001'}]}
    ///   policies: [{name: api-key}]
    /// ---
    /// apiVersion: gw/v1
    /// kind: Consumer
    /// metadata: {name: acme}
    /// spec:
    ///   credentials: [{type: api-key, id: k1, key: acme-secret-key-0123456789}]
    /// "#;
    /// let config = gateway.apply_definitions(1, definitions.as_bytes(), Format::Yaml).await?;
    /// assert_eq!(config.apis().len(), 1);
    /// assert!(config.consumers().get("acme").is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply_definitions(
        &self,
        revision: i64,
        text: &[u8],
        format: Format,
    ) -> Result<Arc<GatewayConfig>, DefinitionsError> {
        let ctx = model::ValidationContext {
            policies: Some(&self.registry),
        };
        // the errors go to the embedder's logs: they never quote a key or a password
        let set = model::parse_set(text, format, &ctx).map_err(model::ModelError::redacted)?;
        let resources = if set.consumers.iter().all(ConsumerDefinition::is_sealed) {
            Resources::from_set(set)?
        } else {
            match tokio::task::spawn_blocking(move || Resources::from_set(set)).await {
                Ok(resources) => resources?,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(DefinitionsError::Cancelled),
            }
        };
        Ok(self.apply_resources(revision, resources)?)
    }
}

#[cfg(all(test, feature = "yaml", feature = "basic-auth", feature = "api-key"))]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use crate::policy::PolicyRegistry;

    fn gateway() -> Gateway {
        Gateway::new(PolicyRegistry::builtin(), ProxyMetrics::unregistered())
    }

    const SET: &str = "
apiVersion: gw/v1
kind: Api
metadata: {name: orders}
spec:
  context: /orders
  upstream: {endpoints: [{url: 'http://127.0.0.1:9'}]}
  policies: [{name: basic-auth}]
---
apiVersion: gw/v1
kind: Consumer
metadata: {name: acme}
spec:
  credentials:
    - {type: basic-auth, id: b1, username: acme, password: correct-horse-battery}
    - {type: api-key, id: k1, key: acme-secret-key-0123456789}
";

    /// Clear credentials are served hashed: the consumer set holds no key or password as
    /// written.
    #[tokio::test]
    async fn definitions_are_served_with_their_credentials_sealed() {
        let gateway = gateway();
        let config = gateway
            .apply_definitions(7, SET.as_bytes(), Format::Yaml)
            .await
            .unwrap();
        assert_eq!(config.revision(), 7);
        assert_eq!(gateway.config().revision(), 7);
        let acme = config.consumers().get("acme").unwrap();
        assert!(acme.is_sealed());
        let credentials = &acme.spec.credentials;
        assert!(credentials[0].password_hash.is_some());
        assert!(credentials[1].key_hash.is_some());
    }

    #[test]
    fn from_set_seals_without_a_runtime() {
        let ctx = model::ValidationContext {
            policies: Some(&PolicyRegistry::builtin()),
        };
        let set = model::parse_set(SET.as_bytes(), Format::Yaml, &ctx).unwrap();
        assert!(!set.consumers[0].is_sealed());
        let resources = Resources::from_set(set).unwrap();
        assert!(resources.consumers[0].is_sealed());
        assert_eq!(resources.apis.len(), 1);
    }

    /// The errors of an invalid set never quote a credential: a key written where a
    /// credential's mapping belongs is named by its path, not repeated.
    #[tokio::test]
    async fn errors_never_quote_a_credential() {
        let gateway = gateway();
        let bad = SET.replace(
            "- {type: api-key, id: k1, key: acme-secret-key-0123456789}",
            "- acme-secret-key-0123456789",
        );
        assert_ne!(bad, SET);
        let error = gateway
            .apply_definitions(1, bad.as_bytes(), Format::Yaml)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("spec.credentials[1]"), "{error}");
        assert!(!error.contains("acme-secret"), "{error}");
    }

    /// An invalid set is reported with its paths, and the configuration served stays.
    #[tokio::test]
    async fn invalid_definitions_keep_the_configuration() {
        let gateway = gateway();
        gateway
            .apply_definitions(1, SET.as_bytes(), Format::Yaml)
            .await
            .unwrap();
        let bad = SET.replace("basic-auth}]", "no-such-policy}]");
        let error = gateway
            .apply_definitions(2, bad.as_bytes(), Format::Yaml)
            .await
            .unwrap_err();
        let DefinitionsError::Invalid(error) = error else {
            panic!("{error}");
        };
        assert_eq!(
            error.field_errors()[0].field,
            "documents[0].spec.policies[0].name"
        );
        assert_eq!(gateway.config().revision(), 1);
    }

    /// Two consumers claiming one key: each document is valid, the configuration is not.
    #[tokio::test]
    async fn a_configuration_refused_by_the_gateway_is_rejected() {
        let twice = format!(
            "{SET}---\n{}",
            SET.split("---").nth(1).unwrap().replace("acme}", "other}")
        );
        let error = gateway()
            .apply_definitions(1, twice.as_bytes(), Format::Yaml)
            .await
            .unwrap_err();
        assert!(matches!(error, DefinitionsError::Rejected(_)), "{error}");
    }
}
