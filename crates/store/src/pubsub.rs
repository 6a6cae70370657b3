//! What the Pub/Sub API keeps: topics, subscriptions with their acknowledgement cursors, and IAM
//! policies. Messages themselves live in the topic log, not here.

use crate::Result;
use async_trait::async_trait;
use ferrocore_model::pubsub::{IamPolicy, Subscription, SubscriptionCursor, SubscriptionName, Topic, TopicName};

/// A page of a list: items sorted by name, after `after`, at most `limit`.
#[derive(Debug, Clone)]
pub struct Page<'a, N> {
    pub project: &'a str,
    pub after: Option<&'a N>,
    pub limit: u32,
}

/// Every write is durable when it returns. Registries create the topics they name through
/// [`crate::Store::create_registry`] and [`crate::Store::update_registry`] (origin `Registry`), in
/// the same transaction as the registry.
#[async_trait]
pub trait PubsubStore: Send + Sync + 'static {
    /// `AlreadyExists` for a taken name.
    async fn create_topic(&self, topic: &Topic) -> Result<()>;
    async fn get_topic(&self, name: &TopicName) -> Result<Option<Topic>>;
    async fn list_topics(&self, page: Page<'_, TopicName>) -> Result<Vec<Topic>>;
    /// Replaces labels and retention. `NotFound` if the topic is gone.
    async fn update_topic(&self, topic: &Topic) -> Result<()>;
    /// Deletes the topic and detaches its subscriptions (their topic becomes `None`); `false` when
    /// there was no such topic.
    async fn delete_topic(&self, name: &TopicName) -> Result<bool>;

    /// `AlreadyExists` for a taken name, `NotFound` when its topic does not exist (checked in the
    /// same transaction).
    async fn create_subscription(&self, sub: &Subscription, cursor: &SubscriptionCursor) -> Result<()>;
    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Option<(Subscription, SubscriptionCursor)>>;
    async fn list_subscriptions(&self, page: Page<'_, SubscriptionName>) -> Result<Vec<Subscription>>;
    /// Names of the subscriptions attached to `topic`, sorted, after `after`, at most `limit`.
    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        after: Option<&SubscriptionName>,
        limit: u32,
    ) -> Result<Vec<SubscriptionName>>;
    /// Replaces the settings (not the cursor). `NotFound` if the subscription is gone.
    async fn update_subscription(&self, sub: &Subscription) -> Result<()>;
    /// `false` when there was no such subscription.
    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<bool>;
    /// Writes several cursors in one transaction; subscriptions that are gone are skipped.
    async fn save_cursors(&self, cursors: &[(SubscriptionName, SubscriptionCursor)]) -> Result<()>;

    async fn get_iam_policy(&self, resource: &str) -> Result<Option<IamPolicy>>;
    async fn set_iam_policy(&self, resource: &str, policy: &IamPolicy) -> Result<()>;
    /// Forgets a deleted resource's policy.
    async fn delete_iam_policy(&self, resource: &str) -> Result<()>;
}
