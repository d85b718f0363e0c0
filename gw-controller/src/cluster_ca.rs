//! The cluster's internal CA for the sync channel: made by the first controller of a
//! cluster, loaded by every other, kept in the store with its private key sealed under
//! `GW_ENCRYPTION_KEY` (resealed under a new key by [`reseal`]).
//!
//! Controllers that start together each offer a CA of their own; the store keeps the first
//! and every controller loads that one ([`Store::cluster_secret`]). A controller whose
//! encryption key is not the cluster's cannot open the key and stops, saying so, rather than
//! make a CA of its own that no runtime of the cluster would trust.

use std::time::SystemTime;

use gw_store::{Store, StoreError};
use gw_sync::pki::{ClusterCa, PkiError};
use serde::{Deserialize, Serialize};

use crate::sealed::{SealError, Sealer};

/// The name of the sync CA among the cluster's secrets.
const NAME: &str = "sync-ca";
/// What its sealed key is bound to: a sealed value copied elsewhere does not open.
const CONTEXT: &str = "cluster/sync-ca";

/// The CA as stored: its certificate, and its private key sealed.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    certificate: String,
    sealed_key: String,
}

/// Why the cluster CA cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCaError {
    /// The store did not answer.
    #[error("cannot read or store the cluster CA: {0}")]
    Store(#[from] StoreError),
    /// Its key does not open with this controller's key.
    #[error("the cluster CA's private key does not open: {0}")]
    Sealed(#[from] SealError),
    /// What is stored is not a CA this controller can use.
    #[error("the stored cluster CA is damaged: {0}")]
    Damaged(String),
    /// Making a CA failed.
    #[error("cannot make the cluster CA: {0}")]
    Make(#[from] PkiError),
}

/// The cluster's CA: the one in the store, or, for the first controller, a new one that it
/// stores.
pub async fn load_or_create(
    store: &dyn Store,
    sealer: &Sealer,
) -> Result<ClusterCa, ClusterCaError> {
    let (_, stored) = stored_or_offered(store, sealer).await?;
    let key = sealer.open(&stored.sealed_key, CONTEXT)?;
    ClusterCa::from_pem(&stored.certificate, &key)
        .map_err(|err| ClusterCaError::Damaged(err.to_string()))
}

/// The CA the store keeps (as stored, and read), after offering a new one sealed under
/// `sealer` in case it keeps none yet.
async fn stored_or_offered(
    store: &dyn Store,
    sealer: &Sealer,
) -> Result<(String, Stored), ClusterCaError> {
    let candidate = ClusterCa::generate(SystemTime::now())?;
    let offered = to_text(&Stored {
        certificate: candidate.cert_pem().to_string(),
        sealed_key: sealer.seal(&candidate.key_pem(), CONTEXT),
    })?;
    let kept = store.cluster_secret(NAME, &offered).await?;
    let stored: Stored =
        serde_json::from_str(&kept).map_err(|err| ClusterCaError::Damaged(err.to_string()))?;
    // a key stored in the clear (which no controller writes) is refused, not trusted
    if !Sealer::is_sealed(&stored.sealed_key) {
        return Err(ClusterCaError::Damaged(
            "its private key is not sealed".to_string(),
        ));
    }
    Ok((kept, stored))
}

fn to_text(stored: &Stored) -> Result<String, ClusterCaError> {
    serde_json::to_string(stored).map_err(|err| ClusterCaError::Damaged(err.to_string()))
}

/// Reseals the CA's key under `sealer`'s current key, if it is under a previous one;
/// returns whether it did. Conditional on the stored value, so that two reseals at once
/// (or a change made meanwhile) lose nothing. Like a controller's start, it makes the
/// cluster's CA if the store keeps none yet.
pub async fn reseal(store: &dyn Store, sealer: &Sealer) -> Result<bool, ClusterCaError> {
    for _ in 0..crate::reseal::ATTEMPTS {
        let (kept, mut stored) = stored_or_offered(store, sealer).await?;
        let Some(key) = sealer.reseal(&stored.sealed_key, CONTEXT)? else {
            return Ok(false);
        };
        stored.sealed_key = key;
        if store
            .reseal_cluster_secret(NAME, &kept, &to_text(&stored)?)
            .await?
        {
            return Ok(true);
        }
    }
    Err(ClusterCaError::Damaged(
        "it changed while it was resealed; run the reseal again".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gw_store::StoreOptions;
    use gw_store::testing::TestDatabase;

    use super::*;
    use crate::keys::EncryptionKey;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&EncryptionKey::from_bytes([byte; 32]))
    }

    /// Controllers of one cluster (one key) agree on one CA, even when they start together;
    /// one with another key stops with a reason that names the keys.
    async fn one_ca_per_cluster(store: Arc<dyn Store>) {
        let ours = sealer(7);
        let (a, b) = tokio::join!(
            load_or_create(store.as_ref(), &ours),
            load_or_create(store.as_ref(), &ours)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.hash(), b.hash());
        let later = load_or_create(store.as_ref(), &ours).await.unwrap();
        assert_eq!(later.hash(), a.hash());
        let err = load_or_create(store.as_ref(), &sealer(8))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClusterCaError::Sealed(SealError::OtherKey { .. })),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("every controller needs the same key"),
            "{err}"
        );
        // the private key is not stored in the clear
        let stored = store.cluster_secret(NAME, "unused").await.unwrap();
        assert!(!stored.contains("PRIVATE KEY"), "{stored}");
    }

    #[tokio::test]
    async fn one_ca_per_cluster_on_sqlite() {
        let store = gw_store::open("sqlite::memory:", &StoreOptions::default())
            .await
            .unwrap();
        one_ca_per_cluster(store).await;
    }

    #[tokio::test]
    async fn one_ca_per_cluster_on_postgres() {
        let db = TestDatabase::create().await;
        let store = gw_store::open(db.url(), &StoreOptions::default())
            .await
            .unwrap();
        one_ca_per_cluster(store).await;
    }

    #[tokio::test]
    async fn a_ca_stored_with_its_key_in_the_clear_is_refused() {
        let store = gw_store::open("sqlite::memory:", &StoreOptions::default())
            .await
            .unwrap();
        let ca = ClusterCa::generate(SystemTime::now()).unwrap();
        let planted = serde_json::to_string(&Stored {
            certificate: ca.cert_pem().to_string(),
            sealed_key: ca.key_pem(),
        })
        .unwrap();
        store.cluster_secret(NAME, &planted).await.unwrap();
        let err = load_or_create(store.as_ref(), &sealer(7))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }
}
