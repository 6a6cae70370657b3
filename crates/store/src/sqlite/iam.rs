//! [`IamStore`] on SQLite: API tokens, service accounts with their public keys, server secrets.

use super::{SqliteStore, backend};
use crate::iam::{ApiTokenRecord, IamStore, ServiceAccountKeyRecord, ServiceAccountRecord};
use crate::rows::{account_from_row, key_from_row, to_json, token_from_row};
use crate::{Result, StoreError};
use async_trait::async_trait;

#[async_trait]
impl IamStore for SqliteStore {
    async fn create_api_token(&self, t: &ApiTokenRecord) -> Result<()> {
        // OR IGNORE covers both the id and the hash constraint: either taken means AlreadyExists.
        let done = sqlx::query(
            "INSERT OR IGNORE INTO api_tokens (id, hash, principal, role, project, registry, create_time) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.id.clone())
        .bind(t.hash.to_vec())
        .bind(t.principal.clone())
        .bind(t.role.clone())
        .bind(t.project.clone())
        .bind(t.registry.clone())
        .bind(t.create_time.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY create_time, id")
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = ?")
            .bind(id.to_owned())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_service_account(&self, a: &ServiceAccountRecord) -> Result<()> {
        let done = sqlx::query(
            "INSERT OR IGNORE INTO service_accounts \
             (email, project, account_id, unique_id, display_name, roles, registry, create_time) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(a.email.clone())
        .bind(a.project.clone())
        .bind(a.account_id.clone())
        .bind(a.unique_id.clone())
        .bind(a.display_name.clone())
        .bind(to_json(&a.roles)?)
        .bind(a.registry.clone())
        .bind(a.create_time.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRecord>> {
        let rows = sqlx::query("SELECT * FROM service_accounts ORDER BY email")
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(account_from_row).collect()
    }

    async fn delete_service_account(&self, email: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        // Explicit rather than left to ON DELETE CASCADE alone, so the keys go even on a
        // connection that has foreign keys off.
        sqlx::query("DELETE FROM service_account_keys WHERE email = ?")
            .bind(email.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let done = sqlx::query("DELETE FROM service_accounts WHERE email = ?")
            .bind(email.to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn add_service_account_key(&self, k: &ServiceAccountKeyRecord) -> Result<()> {
        // The check and the insert share the writer's transaction, so a concurrent delete of the
        // account cannot slip in between and leave an orphan key.
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM service_accounts WHERE email = ?")
            .bind(k.email.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound);
        }
        let done = sqlx::query(
            "INSERT OR IGNORE INTO service_account_keys (email, key_id, public_key_der, create_time) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(k.email.clone())
        .bind(k.key_id.clone())
        .bind(k.public_key_der.clone())
        .bind(k.create_time.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_service_account_keys(&self) -> Result<Vec<ServiceAccountKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM service_account_keys ORDER BY email, create_time, key_id")
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn delete_service_account_key(&self, email: &str, key_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM service_account_keys WHERE email = ? AND key_id = ?")
            .bind(email.to_owned())
            .bind(key_id.to_owned())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        // Insert-if-absent and the read in one write transaction: whoever inserted first wins,
        // and every later caller (on any connection to this file) reads that value back.
        let mut tx = self.begin().await?;
        sqlx::query("INSERT OR IGNORE INTO server_secrets (name, value) VALUES (?, ?)")
            .bind(name.to_owned())
            .bind(candidate.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name.to_owned())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(value)
    }
}
