//! [`PubsubStore`] on PostgreSQL: topics, subscriptions with their cursors, IAM policies.

use super::{PostgresStore, Tx, backend};
use crate::pubsub::{Page, PubsubStore};
use crate::rows::{from_json, origin_number, subscription_from_row, to_json, topic_from_row};
use crate::{Result, StoreError};
use async_trait::async_trait;
use ferrocore_model::Registry;
use ferrocore_model::pubsub::{IamPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic, TopicName};
use sqlx::Row;

/// Creates, if absent, the topics a registry's notification configs name; in name order, so two
/// registries naming the same topics never wait on each other's inserts in a cycle.
pub(super) async fn create_registry_topics(tx: &mut Tx, r: &Registry) -> Result<()> {
    let names = r
        .event_notification_configs
        .iter()
        .map(|c| c.pubsub_topic_name.as_str())
        .chain(r.state_notification_config.as_ref().map(|s| s.pubsub_topic_name.as_str()));
    // The model validated the names already; anything else is not a topic to create.
    let mut topics: Vec<TopicName> = names.filter_map(|n| TopicName::parse("topic", n).ok()).collect();
    topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    topics.dedup_by(|a, b| a.as_str() == b.as_str());
    for topic in topics {
        sqlx::query(
            "INSERT INTO pubsub_topics (name, project, labels, retention_seconds, origin) \
             VALUES ($1, $2, '{}', NULL, 1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(topic.as_str())
        .bind(topic.project())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl PubsubStore for PostgresStore {
    async fn create_topic(&self, t: &Topic) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO pubsub_topics (name, project, labels, retention_seconds, origin) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(t.name.as_str())
        .bind(t.name.project())
        .bind(to_json(&t.labels)?)
        .bind(t.message_retention_seconds)
        .bind(origin_number(t.origin))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    async fn get_topic(&self, name: &TopicName) -> Result<Option<Topic>> {
        let row = sqlx::query("SELECT * FROM pubsub_topics WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self, page: Page<'_, TopicName>) -> Result<Vec<Topic>> {
        let rows = sqlx::query("SELECT * FROM pubsub_topics WHERE project = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(page.project)
            .bind(page.after.map_or("", |a| a.as_str()))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn update_topic(&self, t: &Topic) -> Result<()> {
        let done = sqlx::query("UPDATE pubsub_topics SET labels = $1, retention_seconds = $2 WHERE name = $3")
            .bind(to_json(&t.labels)?)
            .bind(t.message_retention_seconds)
            .bind(t.name.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<bool> {
        let mut tx = self.begin().await?;
        // Deleting the row waits for every subscription being created on it (they hold it FOR
        // KEY SHARE), so the detaching below, a later statement, sees them all.
        let done = sqlx::query("DELETE FROM pubsub_topics WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE pubsub_subscriptions SET topic = NULL WHERE topic = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM iam_policies WHERE resource = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn create_subscription(&self, sub: &Subscription, cursor: &SubscriptionCursor) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(topic) = &sub.topic {
            // Held until commit: a concurrent delete of the topic waits, then detaches this one.
            let exists = sqlx::query("SELECT 1 FROM pubsub_topics WHERE name = $1 FOR KEY SHARE")
                .bind(topic.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
        }
        let done = sqlx::query(
            "INSERT INTO pubsub_subscriptions (name, project, topic, settings, floor, acked) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(sub.name.as_str())
        .bind(sub.name.project())
        .bind(sub.topic.as_ref().map(|t| t.as_str()))
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
        let row = sqlx::query("SELECT * FROM pubsub_subscriptions WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self, page: Page<'_, SubscriptionName>) -> Result<Vec<Subscription>> {
        let rows =
            sqlx::query("SELECT * FROM pubsub_subscriptions WHERE project = $1 AND name > $2 ORDER BY name LIMIT $3")
                .bind(page.project)
                .bind(page.after.map_or("", |a| a.as_str()))
                .bind(i64::from(page.limit))
                .fetch_all(&self.pool)
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
            sqlx::query("SELECT name FROM pubsub_subscriptions WHERE topic = $1 AND name > $2 ORDER BY name LIMIT $3")
                .bind(topic.as_str())
                .bind(after.map_or("", |a| a.as_str()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
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
        let done = sqlx::query("UPDATE pubsub_subscriptions SET settings = $1 WHERE name = $2")
            .bind(to_json(sub)?)
            .bind(sub.name.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM pubsub_subscriptions WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM iam_policies WHERE resource = $1")
            .bind(name.as_str())
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
        // In name order (a stable sort: the last of a name still wins), so concurrent batches lock
        // their rows in the same order.
        let mut sorted: Vec<_> = cursors.iter().collect();
        sorted.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
        let mut tx = self.begin().await?;
        for (name, cursor) in sorted {
            sqlx::query("UPDATE pubsub_subscriptions SET floor = $1, acked = $2 WHERE name = $3")
                .bind(cursor.floor as i64)
                .bind(to_json(&cursor.acked)?)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_iam_policy(&self, resource: &str) -> Result<Option<IamPolicy>> {
        let row = sqlx::query("SELECT policy FROM iam_policies WHERE resource = $1")
            .bind(resource)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| from_json(r.get(0))).transpose()
    }

    async fn set_iam_policy(&self, resource: &str, policy: &IamPolicy) -> Result<()> {
        sqlx::query(
            "INSERT INTO iam_policies (resource, policy) VALUES ($1, $2) \
             ON CONFLICT (resource) DO UPDATE SET policy = excluded.policy",
        )
        .bind(resource)
        .bind(to_json(policy)?)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_iam_policy(&self, resource: &str) -> Result<()> {
        sqlx::query("DELETE FROM iam_policies WHERE resource = $1")
            .bind(resource)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
