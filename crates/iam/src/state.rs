//! The in-memory mirror of the identity store: API tokens by hash, service accounts by email with
//! their parsed public keys, and the cache of verified self-signed JWTs. Authentication reads
//! only this; every change through [`crate::Iam`] writes the store first, then the mirror.

use crate::{Grant, Principal, Scope};
use aws_lc_rs::signature::{self, ParsedPublicKey};
use ferrocore_store::iam::{ApiTokenRecord, ServiceAccountKeyRecord, ServiceAccountRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Everything authentication needs, behind one lock.
#[derive(Default)]
pub(crate) struct State {
    /// By SHA-256 of the whole token.
    pub tokens: HashMap<[u8; 32], TokenEntry>,
    /// By email (a BTreeMap so that listing is already ordered).
    pub accounts: BTreeMap<String, Account>,
}

pub(crate) struct TokenEntry {
    pub record: ApiTokenRecord,
    pub principal: Arc<Principal>,
}

impl TokenEntry {
    pub fn new(record: ApiTokenRecord) -> Self {
        let scope = match &record.registry {
            Some(r) => Scope::Registry(r.clone()),
            None => Scope::Project(record.project.clone()),
        };
        let principal = Arc::new(Principal {
            member: record.principal.clone(),
            grants: vec![Grant { role: record.role.clone(), scope }],
        });
        Self { record, principal }
    }
}

pub(crate) struct Account {
    pub record: ServiceAccountRecord,
    pub principal: Arc<Principal>,
    /// Oldest first.
    pub keys: Vec<Key>,
}

impl Account {
    pub fn new(record: ServiceAccountRecord) -> Self {
        let scope = match &record.registry {
            Some(r) => Scope::Registry(r.clone()),
            None => Scope::Project(record.project.clone()),
        };
        let grants = record.roles.iter().map(|role| Grant { role: role.clone(), scope: scope.clone() }).collect();
        let principal = Arc::new(Principal { member: format!("serviceAccount:{}", record.email), grants });
        Self { record, principal, keys: Vec::new() }
    }

    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.record.key_id == key_id)
    }

    /// Adds a key, keeping the keys ordered by creation time then id.
    pub fn add_key(&mut self, record: ServiceAccountKeyRecord) {
        let key = Key::new(record);
        let at = self.keys.partition_point(|k| {
            (k.record.create_time, &k.record.key_id) <= (key.record.create_time, &key.record.key_id)
        });
        self.keys.insert(at, key);
    }
}

pub(crate) struct Key {
    pub record: ServiceAccountKeyRecord,
    /// Parsed once; `None` when the stored DER is not an RSA key (it then verifies nothing).
    pub verifier: Option<Arc<ParsedPublicKey>>,
}

impl Key {
    pub fn new(record: ServiceAccountKeyRecord) -> Self {
        let verifier =
            ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &record.public_key_der).ok().map(Arc::new);
        if verifier.is_none() {
            tracing::warn!(email = %record.email, key_id = %record.key_id, "a stored service-account key does not parse");
        }
        Self { record, verifier }
    }
}

impl State {
    /// The principal of a live account that still has `key_id`.
    pub fn live_principal(&self, email: &str, key_id: &str) -> Option<Arc<Principal>> {
        self.accounts.get(email).filter(|a| a.has_key(key_id)).map(|a| a.principal.clone())
    }

    /// The account's usable keys, as (key id, verifier); `None` when there is no such account.
    pub fn verifiers(&self, email: &str) -> Option<Vec<(String, Arc<ParsedPublicKey>)>> {
        let account = self.accounts.get(email)?;
        Some(
            account
                .keys
                .iter()
                .filter_map(|k| k.verifier.as_ref().map(|v| (k.record.key_id.clone(), v.clone())))
                .collect(),
        )
    }
}

/// A self-signed JWT that verified: who signed it and until when it may be used.
#[derive(Debug, Clone)]
pub(crate) struct CachedJwt {
    pub email: String,
    pub key_id: String,
    /// `exp` plus the clock skew, in unix seconds: refused after this.
    pub usable_until: i64,
}

/// The most verified self-signed JWTs remembered; past it, expired ones are dropped, and if that
/// is not enough, all (each then costs one more RSA verify).
pub(crate) const JWT_CACHE_LIMIT: usize = 10_000;

/// Remembers `jwt` under `hash`, keeping the cache bounded.
pub(crate) fn remember(cache: &mut HashMap<[u8; 32], CachedJwt>, hash: [u8; 32], jwt: CachedJwt, now: i64) {
    if cache.len() >= JWT_CACHE_LIMIT {
        cache.retain(|_, c| c.usable_until >= now);
        if cache.len() >= JWT_CACHE_LIMIT {
            cache.clear();
        }
    }
    cache.insert(hash, jwt);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwt_cache_stays_bounded() {
        let mut cache = HashMap::new();
        let entry = |until| CachedJwt { email: "e".into(), key_id: "k".into(), usable_until: until };
        for i in 0..JWT_CACHE_LIMIT as u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            // Half of them already expired at now = 100.
            remember(&mut cache, h, entry(if i % 2 == 0 { 50 } else { 200 }), 100);
        }
        assert_eq!(cache.len(), JWT_CACHE_LIMIT);
        remember(&mut cache, [0xff; 32], entry(200), 100);
        assert_eq!(cache.len(), JWT_CACHE_LIMIT / 2 + 1);
        assert!(cache.values().all(|c| c.usable_until >= 100));
    }
}
