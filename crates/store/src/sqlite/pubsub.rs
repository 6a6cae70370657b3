//! [`PubsubStore`] on SQLite: topics, subscriptions with their cursors, IAM policies.

use super::{SqliteStore, backend};
use crate::pubsub::{Page, PubsubStore};
use crate::rows::{from_json, origin_number, subscription_from_row, to_json, topic_from_row};
use crate::{Result, StoreError};
use async_trait::async_trait;
use ferrocore_model::Registry;
use ferrocore_model::pubsub::{IamPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic, TopicName};
use sqlx::{Row, Sqlite, Transaction};

/// Creates, if absent, the topics a registry's notification configs name.
pub(super) async fn create_registry_topics(tx: &mut Transaction<'static, Sqlite>, r: &Registry) -> Result<()> {
    let names = r
        .event_notification_configs
        .iter()
        .map(|c| c.pubsub_topic_name.as_str())
        .chain(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.as_str()));
    for name in names {
        // The model validated the names already; anything else is not a topic to create.
        let Ok(topic) = TopicName::parse("topic", name) else { continue };
        sqlx::query(
            "INSERT OR IGNORE INTO pubsub_topics (name, project, labels, retention_seconds, origin) \
             VALUES (?, ?, '{}', NULL, 1)",
        )
        .bind(topic.as_str().to_owned())
        .bind(topic.project().to_owned())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl PubsubStore for SqliteStore {
    async fn create_topic(&self, t: &Topic) -> Result<()> {
        let done = sqlx::query(
            "INSERT OR IGNORE INTO pubsub_topics (name, project, labels, retention_seconds, origin) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(t.name.as_str().to_owned())
        .bind(t.name.project().to_owned())
        .bind(to_json(&t.labels)?)
        .bind(t.message_retention_seconds)
        .bind(origin_number(t.origin))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn get_topic(&self, name: &TopicName) -> Result<Option<Topic>> {
        let row = sqlx::query("SELECT * FROM pubsub_topics WHERE name = ?")
            .bind(name.as_str().to_owned())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self, page: Page<'_, TopicName>) -> Result<Vec<Topic>> {
        let rows = sqlx::query("SELECT * FROM pubsub_topics WHERE project = ? AND name > ? ORDER BY name LIMIT ?")
            .bind(page.project.to_owned())
            .bind(page.after.map(|a| a.as_str().to_owned()).unwrap_or_default())
            .bind(i64::from(page.limit))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn update_topic(&self, t: &Topic) -> Result<()> {
        let done = sqlx::query("UPDATE pubsub_topics SET labels = ?, retention_seconds = ? WHERE name = ?")
            .bind(to_json(&t.labels)?)
            .bind(t.message_retention_seconds)
            .bind(t.name.as_str().to_owned())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM pubsub_topics WHERE name = ?")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE pubsub_subscriptions SET topic = NULL WHERE topic = ?")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM iam_policies WHERE resource = ?")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn create_subscription(&self, sub: &Subscription, cursor: &SubscriptionCursor) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(topic) = &sub.topic {
            let exists = sqlx::query("SELECT 1 FROM pubsub_topics WHERE name = ?")
                .bind(topic.as_str().to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
        }
        let done = sqlx::query(
            "INSERT OR IGNORE INTO pubsub_subscriptions (name, project, topic, settings, floor, acked) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(sub.name.as_str().to_owned())
        .bind(sub.name.project().to_owned())
        .bind(sub.topic.as_ref().map(|t| t.as_str().to_owned()))
        .bind(to_json(sub)?)
        .bind(cursor.floor as i64)
        .bind(to_json(&cursor.acked)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Option<(Subscription, SubscriptionCursor)>> {
        let row = sqlx::query("SELECT * FROM pubsub_subscriptions WHERE name = ?")
            .bind(name.as_str().to_owned())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self, page: Page<'_, SubscriptionName>) -> Result<Vec<Subscription>> {
        let rows =
            sqlx::query("SELECT * FROM pubsub_subscriptions WHERE project = ? AND name > ? ORDER BY name LIMIT ?")
                .bind(page.project.to_owned())
                .bind(page.after.map(|a| a.as_str().to_owned()).unwrap_or_default())
                .bind(i64::from(page.limit))
                .fetch_all(&mut *self.reader().await?)
                .await
                .map_err(backend)?;
        rows.iter().map(|r| subscription_from_row(r).map(|(s, _)| s)).collect()
    }

    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        after: Option<&SubscriptionName>,
        limit: u32,
    ) -> Result<Vec<SubscriptionName>> {
        let rows =
            sqlx::query("SELECT name FROM pubsub_subscriptions WHERE topic = ? AND name > ? ORDER BY name LIMIT ?")
                .bind(topic.as_str().to_owned())
                .bind(after.map(|a| a.as_str().to_owned()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(&mut *self.reader().await?)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                SubscriptionName::parse("name", &name).map_err(|e| StoreError::Backend(format!("stored name: {e}")))
            })
            .collect()
    }

    async fn update_subscription(&self, sub: &Subscription) -> Result<()> {
        let done = sqlx::query("UPDATE pubsub_subscriptions SET settings = ? WHERE name = ?")
            .bind(to_json(sub)?)
            .bind(sub.name.as_str().to_owned())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM pubsub_subscriptions WHERE name = ?")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM iam_policies WHERE resource = ?")
            .bind(name.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn save_cursors(&self, cursors: &[(SubscriptionName, SubscriptionCursor)]) -> Result<()> {
        if cursors.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (name, cursor) in cursors {
            sqlx::query("UPDATE pubsub_subscriptions SET floor = ?, acked = ? WHERE name = ?")
                .bind(cursor.floor as i64)
                .bind(to_json(&cursor.acked)?)
                .bind(name.as_str().to_owned())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_iam_policy(&self, resource: &str) -> Result<Option<IamPolicy>> {
        let row = sqlx::query("SELECT policy FROM iam_policies WHERE resource = ?")
            .bind(resource.to_owned())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(backend)?;
        row.map(|r| from_json(r.get(0))).transpose()
    }

    async fn set_iam_policy(&self, resource: &str, policy: &IamPolicy) -> Result<()> {
        sqlx::query("INSERT INTO iam_policies (resource, policy) VALUES (?, ?) ON CONFLICT (resource) DO UPDATE SET policy = excluded.policy")
            .bind(resource.to_owned())
            .bind(to_json(policy)?)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_iam_policy(&self, resource: &str) -> Result<()> {
        sqlx::query("DELETE FROM iam_policies WHERE resource = ?")
            .bind(resource.to_owned())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
