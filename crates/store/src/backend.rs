//! What a server needs of a storage backend: every store trait, and a clean close. SQLite (the
//! embedded default) and PostgreSQL (for several nodes) both are one; [`Metered`] over one is one.

use crate::metered::Metered;
use crate::{IamStore, PubsubStore, SinkStore, Store};
use async_trait::async_trait;

#[async_trait]
pub trait Backend: Store + PubsubStore + SinkStore + IamStore {
    /// Waits for writes in progress and closes the connections.
    async fn close(&self);
}

#[async_trait]
impl Backend for crate::sqlite::SqliteStore {
    async fn close(&self) {
        crate::sqlite::SqliteStore::close(self).await
    }
}

#[async_trait]
impl Backend for crate::postgres::PostgresStore {
    async fn close(&self) {
        crate::postgres::PostgresStore::close(self).await
    }
}

#[async_trait]
impl<B: Backend> Backend for Metered<B> {
    async fn close(&self) {
        self.inner().close().await
    }
}
