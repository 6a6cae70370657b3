//! API tokens: a principal with one role on a project or one registry, created by the operator
//! (`ferrocore tokens create`), shown once, stored as a SHA-256 hash, revocable at once.
//!
//! A token is `fct_` followed by 43 base64url characters (32 random bytes); its public id is 16
//! lowercase hex. Lookup is by the hash of the presented value, so no stored secret is ever
//! compared byte by byte.

use crate::b64::{BASE64URL, random_hex, sha256};
use crate::state::TokenEntry;
use crate::{Iam, storage};
use base64::Engine as _;
use ferrocore_core::{Error, Result};
use ferrocore_model::{ProjectId, RegistryName};
use ferrocore_store::iam::ApiTokenRecord;

/// The prefix every API token starts with.
pub const PREFIX: &str = "fct_";

/// What `tokens create` asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// An IAM member: `user:EMAIL`, `serviceAccount:EMAIL`, `group:EMAIL` or `domain:NAME`.
    pub principal: String,
    /// One of [`crate::roles::ROLES`].
    pub role: String,
    pub project: String,
    /// Limits the grant to this registry (which must be in `project`; it need not exist yet).
    pub registry: Option<RegistryName>,
}

/// The token operations, borrowed from [`Iam::tokens`].
pub struct Tokens<'a>(pub(crate) &'a Iam);

impl Tokens<'_> {
    /// Creates a token; returns its record and the token itself (the only time it is seen).
    /// INVALID_ARGUMENT (with the field: `principal`, `role`, `registry`) for bad input.
    pub async fn create(&self, new: NewToken) -> Result<(ApiTokenRecord, String)> {
        ProjectId::parse_field("project", &new.project)?;
        if !crate::policy::valid_principal(&new.principal) {
            return Err(Error::invalid(
                "principal",
                format!(
                    "Invalid principal '{}': expected user:EMAIL, serviceAccount:EMAIL, group:EMAIL or domain:NAME.",
                    ferrocore_model::ids::printable(&new.principal)
                ),
            ));
        }
        if !crate::roles::is_role(&new.role) {
            return Err(Error::invalid(
                "role",
                format!(
                    "Unknown role '{}': use one of {}.",
                    ferrocore_model::ids::printable(&new.role),
                    crate::roles::ROLES.join(", ")
                ),
            ));
        }
        if let Some(r) = &new.registry
            && r.parent.project.as_str() != new.project
        {
            return Err(Error::invalid("registry", "The registry must be in the token's project."));
        }
        let token = format!("{PREFIX}{}", BASE64URL.encode(rand::random::<[u8; 32]>()));
        let record = ApiTokenRecord {
            id: random_hex(8),
            hash: sha256(token.as_bytes()),
            principal: new.principal,
            role: new.role,
            project: new.project,
            registry: new.registry.map(|r| r.to_string()),
            create_time: self.0.clock().now(),
        };
        self.0.store().create_api_token(&record).await.map_err(storage)?;
        self.0.write().tokens.insert(record.hash, TokenEntry::new(record.clone()));
        Ok((record, token))
    }

    /// The project's tokens, oldest first.
    pub fn list(&self, project: &str) -> Vec<ApiTokenRecord> {
        let mut tokens: Vec<ApiTokenRecord> =
            self.0.read().tokens.values().filter(|t| t.record.project == project).map(|t| t.record.clone()).collect();
        tokens.sort_by(|a, b| (a.create_time, &a.id).cmp(&(b.create_time, &b.id)));
        tokens
    }

    /// Revokes a token of `project`: refused from the moment this returns. NOT_FOUND when the
    /// project has no token with this id.
    pub async fn revoke(&self, project: &str, id: &str) -> Result<()> {
        let not_found = || Error::not_found(format!("Token '{}' was not found.", ferrocore_model::ids::printable(id)));
        let hash = self
            .0
            .read()
            .tokens
            .iter()
            .find(|(_, t)| t.record.id == id && t.record.project == project)
            .map(|(hash, _)| *hash)
            .ok_or_else(not_found)?;
        // The store first: if it fails, the token keeps working and a retry of the revocation
        // finds it again. (`false` means another node removed it already: revoked all the same.)
        self.0.store().delete_api_token(id).await.map_err(storage)?;
        self.0.write().tokens.remove(&hash);
        Ok(())
    }
}
