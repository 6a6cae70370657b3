//! [`IamStore`] on PostgreSQL: API tokens, service accounts with their public keys, server secrets.

use super::{PostgresStore, backend};
use crate::iam::{ApiTokenRecord, IamStore, ServiceAccountKeyRecord, ServiceAccountRecord};
use crate::rows::{account_from_row, key_from_row, to_json, token_from_row};
use crate::{Result, StoreError};
use async_trait::async_trait;

#[async_trait]
impl IamStore for PostgresStore {
    async fn create_api_token(&self, t: &ApiTokenRecord) -> Result<()> {
        // No conflict target: a taken id and a taken hash both leave the row out, AlreadyExists.
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, hash, principal, role, project, registry, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(t.id.as_str())
        .bind(t.hash.as_slice())
        .bind(t.principal.as_str())
        .bind(t.role.as_str())
        .bind(t.project.as_str())
        .bind(t.registry.as_deref())
        .bind(t.create_time.0)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY create_time, id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(id).execute(&self.pool).await.map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_service_account(&self, a: &ServiceAccountRecord) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO service_accounts \
             (email, project, account_id, unique_id, display_name, roles, registry, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (email) DO NOTHING",
        )
        .bind(a.email.as_str())
        .bind(a.project.as_str())
        .bind(a.account_id.as_str())
        .bind(a.unique_id.as_str())
        .bind(a.display_name.as_str())
        .bind(to_json(&a.roles)?)
        .bind(a.registry.as_deref())
        .bind(a.create_time.0)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRecord>> {
        let rows = sqlx::query("SELECT * FROM service_accounts ORDER BY email")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(account_from_row).collect()
    }

    async fn delete_service_account(&self, email: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The account first: deleting it waits for any key being added to it (that holds the
        // account FOR KEY SHARE), and ON DELETE CASCADE takes that key too.
        let done = sqlx::query("DELETE FROM service_accounts WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM service_account_keys WHERE email = $1")
            .bind(email)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn add_service_account_key(&self, k: &ServiceAccountKeyRecord) -> Result<()> {
        let mut tx = self.begin().await?;
        // Held until commit, so the account cannot be deleted between the check and the insert.
        let exists = sqlx::query("SELECT 1 FROM service_accounts WHERE email = $1 FOR KEY SHARE")
            .bind(k.email.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound);
        }
        // No conflict target: the (email, key_id) key and the unique key_id both mean AlreadyExists.
        let done = sqlx::query(
            "INSERT INTO service_account_keys (email, key_id, public_key_der, create_time) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(k.email.as_str())
        .bind(k.key_id.as_str())
        .bind(k.public_key_der.as_slice())
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
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    async fn delete_service_account_key(&self, email: &str, key_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM service_account_keys WHERE email = $1 AND key_id = $2")
            .bind(email)
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        // Insert-if-absent, then read in a later statement: a concurrent first insert makes ours
        // wait for its commit and do nothing, and the read sees the winner's value. The two
        // statements need no common transaction, since the value never changes once stored.
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }
}
