//! What identity and access keep: API tokens (only their SHA-256 hashes), service accounts with
//! the public halves of their keys, and the server's own secrets (the key that signs access
//! tokens). Policies on registries, topics and subscriptions live in the Pub/Sub store's
//! `iam_policies` table ([`crate::PubsubStore::get_iam_policy`]), keyed by resource name.

use crate::Result;
use async_trait::async_trait;
use ferrocore_model::Timestamp;

/// An API token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// Public identifier (what `tokens list` shows and `tokens revoke` takes): 16 lowercase hex.
    pub id: String,
    /// SHA-256 of the whole token string; unique.
    pub hash: [u8; 32],
    /// The IAM member it acts as, e.g. `serviceAccount:ingest@example.iam` or `user:ana@example.com`.
    pub principal: String,
    /// A predefined role, e.g. `roles/cloudiot.provisioner`.
    pub role: String,
    /// The project the grant is on.
    pub project: String,
    /// When set, the grant is on this registry only (`projects/P/locations/L/registries/R`).
    pub registry: Option<String>,
    pub create_time: Timestamp,
}

/// A service account: an identity back ends authenticate as with a Google-format key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRecord {
    /// `NAME@PROJECT.iam.gserviceaccount.com`; unique.
    pub email: String,
    pub project: String,
    /// NAME: 6-30 characters, `[a-z]([-a-z0-9]*[a-z0-9])`.
    pub account_id: String,
    /// A 21-digit number, as Google's `uniqueId` / the key file's `client_id`.
    pub unique_id: String,
    pub display_name: String,
    /// Predefined roles granted on the project, or on `registry` alone when it is set.
    pub roles: Vec<String>,
    pub registry: Option<String>,
    pub create_time: Timestamp,
}

/// The public half of a service-account key; the private half is handed out once and not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountKeyRecord {
    pub email: String,
    /// 40 lowercase hex, the key file's `private_key_id` and the JWT header's `kid`.
    pub key_id: String,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    pub create_time: Timestamp,
}

/// Every write is durable when it returns.
#[async_trait]
pub trait IamStore: Send + Sync + 'static {
    /// `AlreadyExists` when the id or the hash is taken.
    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<()>;
    /// Every token, ordered by creation time then id.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>>;
    /// `false` when there was no such token.
    async fn delete_api_token(&self, id: &str) -> Result<bool>;

    /// `AlreadyExists` when the email is taken.
    async fn create_service_account(&self, account: &ServiceAccountRecord) -> Result<()>;
    /// Every account, ordered by email.
    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRecord>>;
    /// Deletes the account with all its keys in one transaction; `false` when there was none.
    async fn delete_service_account(&self, email: &str) -> Result<bool>;

    /// `NotFound` when the account does not exist (checked in the same transaction),
    /// `AlreadyExists` for a taken key id.
    async fn add_service_account_key(&self, key: &ServiceAccountKeyRecord) -> Result<()>;
    /// Every key of every account, ordered by email then creation time.
    async fn list_service_account_keys(&self) -> Result<Vec<ServiceAccountKeyRecord>>;
    /// `false` when the account has no such key.
    async fn delete_service_account_key(&self, email: &str, key_id: &str) -> Result<bool>;

    /// The secret stored under `name`; when there is none yet, stores `candidate` and returns it.
    /// Atomic: concurrent callers (or nodes) all get the same value.
    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;
}
