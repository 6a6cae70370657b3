//! Service accounts: identities for back ends, with roles on their project (or on one registry)
//! and RSA keys handed out in Google's JSON key-file format, so code that reads
//! `GOOGLE_APPLICATION_CREDENTIALS` authenticates to Ferrocore unchanged.
//!
//! The key pair is made here (RSA 2048); the private key goes into the key file, returned once, and
//! only the public key is kept. Deleting an account (or a key) ends every access token and
//! self-signed JWT made with it at once.

use crate::b64::random_hex;
use crate::state::Account;
use crate::{Iam, storage};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use ferrocore_core::error::Code;
use ferrocore_core::{Error, Result};
use ferrocore_model::ids::printable;
use ferrocore_model::{ProjectId, RegistryName};
use ferrocore_store::StoreError;
use ferrocore_store::iam::{ServiceAccountKeyRecord, ServiceAccountRecord};
use serde::Serialize;

/// The domain of every service account's email: `NAME@PROJECT.iam.gserviceaccount.com`.
pub const EMAIL_DOMAIN: &str = "iam.gserviceaccount.com";

/// What `service-accounts create` asks for.
#[derive(Debug, Clone)]
pub struct NewServiceAccount {
    pub project: String,
    /// 6-30 characters: a lowercase letter, then lowercase letters, digits and `-`, not ending in `-`.
    pub account_id: String,
    pub display_name: String,
    /// At least one of [`crate::roles::ROLES`], no duplicates.
    pub roles: Vec<String>,
    /// Limits the roles to this registry (in `project`).
    pub registry: Option<RegistryName>,
}

/// A new key: its record, and the key file (Google's `service_account` JSON, private key included).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: ServiceAccountKeyRecord,
    pub key_file: String,
}

/// The service-account operations, borrowed from [`Iam::service_accounts`].
pub struct ServiceAccounts<'a>(pub(crate) &'a Iam);

impl ServiceAccounts<'_> {
    /// ALREADY_EXISTS when the email is taken; INVALID_ARGUMENT (field `accountId`, `roles`,
    /// `registry`) for bad input.
    pub async fn create(&self, new: NewServiceAccount) -> Result<ServiceAccountRecord> {
        ProjectId::parse_field("project", &new.project)?;
        if new.project.contains('@') {
            return Err(Error::invalid("project", "A project id must not contain '@'."));
        }
        if !valid_account_id(&new.account_id) {
            return Err(Error::invalid(
                "accountId",
                format!(
                    "Invalid account id '{}': 6 to 30 characters, a lowercase letter first, then lowercase \
                     letters, digits and '-', not ending in '-'.",
                    printable(&new.account_id)
                ),
            ));
        }
        if new.display_name.chars().count() > 100 || new.display_name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "serviceAccount.displayName",
                "The display name must be at most 100 characters, without control characters.",
            ));
        }
        if new.roles.is_empty() {
            return Err(Error::invalid("roles", "A service account needs at least one role."));
        }
        for (i, role) in new.roles.iter().enumerate() {
            if !crate::roles::is_role(role) {
                return Err(Error::invalid(
                    "roles",
                    format!("Unknown role '{}': use one of {}.", printable(role), crate::roles::ROLES.join(", ")),
                ));
            }
            if new.roles[..i].contains(role) {
                return Err(Error::invalid("roles", format!("The role '{role}' is named twice.")));
            }
        }
        if let Some(r) = &new.registry
            && r.parent.project.as_str() != new.project
        {
            return Err(Error::invalid("registry", "The registry must be in the service account's project."));
        }
        let email = format!("{}@{}.{EMAIL_DOMAIN}", new.account_id, new.project);
        let already =
            || Error::new(Code::AlreadyExists, format!("Service account {} already exists.", printable(&email)));
        if self.0.read().accounts.contains_key(&email) {
            return Err(already());
        }
        let record = ServiceAccountRecord {
            email: email.clone(),
            project: new.project,
            account_id: new.account_id,
            unique_id: unique_id(),
            display_name: new.display_name,
            roles: new.roles,
            registry: new.registry.map(|r| r.to_string()),
            create_time: self.0.clock().now(),
        };
        match self.0.store().create_service_account(&record).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => return Err(already()),
            Err(e) => return Err(storage(e)),
        }
        self.0.write().accounts.insert(email, Account::new(record.clone()));
        Ok(record)
    }

    /// The project's accounts, by email.
    pub fn list(&self, project: &str) -> Vec<ServiceAccountRecord> {
        self.0.read().accounts.values().filter(|a| a.record.project == project).map(|a| a.record.clone()).collect()
    }

    /// The account with this email (in `project`), or NOT_FOUND.
    pub fn get(&self, project: &str, email: &str) -> Result<ServiceAccountRecord> {
        self.0
            .read()
            .accounts
            .get(email)
            .filter(|a| a.record.project == project)
            .map(|a| a.record.clone())
            .ok_or_else(|| no_account(email))
    }

    /// Deletes the account, its keys and everything issued to it; NOT_FOUND when there is none.
    pub async fn delete(&self, project: &str, email: &str) -> Result<()> {
        self.get(project, email)?;
        self.0.store().delete_service_account(email).await.map_err(storage)?;
        // Its access tokens and cached JWTs are refused from now on: each use looks the account up.
        self.0.write().accounts.remove(email);
        Ok(())
    }

    /// Makes a key pair for the account and returns the key file, whose `token_uri` is
    /// `token_uri` (this server's `/token` URL).
    pub async fn create_key(&self, project: &str, email: &str, token_uri: &str) -> Result<NewKey> {
        let account = self.get(project, email)?;
        // RSA key generation takes tens to hundreds of milliseconds: off the async workers.
        let generated = tokio::task::spawn_blocking(generate_key).await.ok().flatten();
        let Some((pkcs8, public_key_der)) = generated else {
            tracing::error!("RSA key generation failed");
            return Err(Error::new(Code::Internal, "The key could not be generated; retry."));
        };
        let record = ServiceAccountKeyRecord {
            email: account.email.clone(),
            key_id: random_hex(20),
            public_key_der,
            create_time: self.0.clock().now(),
        };
        match self.0.store().add_service_account_key(&record).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(no_account(email)),
            Err(e) => return Err(storage(e)),
        }
        // The account may have been deleted meanwhile (its keys with it): then the key stays out.
        if let Some(a) = self.0.write().accounts.get_mut(email) {
            a.add_key(record.clone());
        }
        let key_file = key_file(&account, &record.key_id, &pkcs8, token_uri);
        Ok(NewKey { record, key_file })
    }

    /// The account's keys, oldest first; NOT_FOUND when the account does not exist.
    pub fn list_keys(&self, project: &str, email: &str) -> Result<Vec<ServiceAccountKeyRecord>> {
        self.0
            .read()
            .accounts
            .get(email)
            .filter(|a| a.record.project == project)
            .map(|a| a.keys.iter().map(|k| k.record.clone()).collect())
            .ok_or_else(|| no_account(email))
    }

    /// NOT_FOUND when the account has no such key.
    pub async fn delete_key(&self, project: &str, email: &str, key_id: &str) -> Result<()> {
        let no_key = || Error::not_found(format!("Service account key {} does not exist.", printable(key_id)));
        {
            let state = self.0.read();
            let account = state.accounts.get(email).filter(|a| a.record.project == project);
            if !account.ok_or_else(|| no_account(email))?.has_key(key_id) {
                return Err(no_key());
            }
        }
        self.0.store().delete_service_account_key(email, key_id).await.map_err(storage)?;
        if let Some(a) = self.0.write().accounts.get_mut(email) {
            a.keys.retain(|k| k.record.key_id != key_id);
        }
        Ok(())
    }
}

fn no_account(email: &str) -> Error {
    Error::not_found(format!("Service account {} does not exist.", printable(email)))
}

/// `^[a-z][-a-z0-9]{4,28}[a-z0-9]$`, as Google's accountId.
fn valid_account_id(id: &str) -> bool {
    let b = id.as_bytes();
    (6..=30).contains(&b.len())
        && b.first().is_some_and(u8::is_ascii_lowercase)
        && b.last().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// 21 decimal digits, the first not zero, as Google's `uniqueId`.
fn unique_id() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut id = String::with_capacity(21);
    id.push(char::from(b'1' + rng.random_range(0..9u8)));
    for _ in 0..20 {
        id.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    id
}

/// A new RSA 2048 key pair: (PKCS #8 DER of the private key, SubjectPublicKeyInfo DER).
fn generate_key() -> Option<(Vec<u8>, Vec<u8>)> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).ok()?;
    let pkcs8 = pair.as_der().ok()?.as_ref().to_vec();
    let spki = pair.public_key().as_der().ok()?.as_ref().to_vec();
    Some((pkcs8, spki))
}

/// `-----BEGIN PRIVATE KEY-----`, base64 in 64-character lines, `-----END PRIVATE KEY-----`.
fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Google's service-account key file, members in Google's order.
#[derive(Serialize)]
struct KeyFile<'a> {
    r#type: &'a str,
    project_id: &'a str,
    private_key_id: &'a str,
    private_key: &'a str,
    client_email: &'a str,
    client_id: &'a str,
    auth_uri: &'a str,
    token_uri: &'a str,
    auth_provider_x509_cert_url: &'a str,
    client_x509_cert_url: &'a str,
    universe_domain: &'a str,
}

fn key_file(account: &ServiceAccountRecord, key_id: &str, pkcs8: &[u8], token_uri: &str) -> String {
    let private_key = pem(pkcs8);
    let cert_url = format!("https://www.googleapis.com/robot/v1/metadata/x509/{}", percent_encode(&account.email));
    let file = KeyFile {
        r#type: "service_account",
        project_id: &account.project,
        private_key_id: key_id,
        private_key: &private_key,
        client_email: &account.email,
        client_id: &account.unique_id,
        auth_uri: "https://accounts.google.com/o/oauth2/auth",
        token_uri,
        auth_provider_x509_cert_url: "https://www.googleapis.com/oauth2/v1/certs",
        client_x509_cert_url: &cert_url,
        universe_domain: "googleapis.com",
    };
    // A struct of strings always serializes.
    let mut json = serde_json::to_string_pretty(&file).unwrap_or_default();
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        for ok in ["backend", "a-b-c-1", "abcdef", &format!("a{}", "b".repeat(29))] {
            assert!(valid_account_id(ok), "{ok}");
        }
        for bad in ["", "abcde", "1abcdef", "abcdef-", "Abcdef", "abc_def", "abcdé1", &format!("a{}", "b".repeat(30))]
        {
            assert!(!valid_account_id(bad), "{bad}");
        }
    }

    #[test]
    fn unique_ids_have_21_digits() {
        for _ in 0..100 {
            let id = unique_id();
            assert_eq!(id.len(), 21);
            assert!(id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0'));
        }
    }

    #[test]
    fn pem_lines_and_percent_encoding() {
        let p = pem(&[7u8; 100]);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN PRIVATE KEY-----"));
        assert_eq!(lines.last(), Some(&"-----END PRIVATE KEY-----"));
        assert_eq!(lines[1].len(), 64);
        assert!(p.ends_with('\n'));
        assert_eq!(percent_encode("a-b@p.iam.gserviceaccount.com"), "a-b%40p.iam.gserviceaccount.com");
    }
}
