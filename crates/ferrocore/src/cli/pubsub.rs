//! `ferrocore pubsub ...`: the verbs of `gcloud pubsub` over the server's Pub/Sub REST API, for
//! looking at and driving the topics that devices publish to without writing a client.
//!
//! * `topics list|create|describe|delete|publish`;
//! * `subscriptions list|create|describe|delete|seek|ack|pull`;
//! * `pull` (the same as `subscriptions pull`).
//!
//! Topics and subscriptions are given by id (with `--project`) or by full name
//! (`projects/P/topics/T`, `projects/P/subscriptions/S`).

use super::api::{Api, Connection, full_name, last_id, no_slash};
use super::output::{Column, Output, bytes_text, number, pairs, shorten, status};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ferrocore_proto::{Empty, pubsub as ps};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Args, Debug)]
pub struct PubsubArgs {
    #[command(subcommand)]
    command: PubsubCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    project: Project,
    #[command(flatten)]
    output: Output,
}

/// The project of topics and subscriptions given by id.
#[derive(Args, Debug, Clone)]
struct Project {
    /// Project id; not needed when resources are given by their full name.
    #[arg(long, env = "FERROCORE_PROJECT", global = true)]
    project: Option<String>,
}

impl Project {
    fn name(&self, id_or_name: &str, collection: &str, what: &str) -> Result<String> {
        if id_or_name.starts_with("projects/") {
            return full_name(id_or_name, &["projects", collection]);
        }
        no_slash(what, id_or_name)?;
        let project =
            self.project.as_deref().context("no project: give --project (or FERROCORE_PROJECT), or a full name")?;
        Ok(format!("projects/{project}/{collection}/{id_or_name}"))
    }

    fn topic(&self, id_or_name: &str) -> Result<String> {
        self.name(id_or_name, "topics", "topic")
    }

    fn subscription(&self, id_or_name: &str) -> Result<String> {
        self.name(id_or_name, "subscriptions", "subscription")
    }

    /// `projects/P`, for lists.
    fn parent(&self) -> Result<String> {
        let project = self.project.as_deref().context("no project: give --project (or FERROCORE_PROJECT)")?;
        Ok(format!("projects/{project}"))
    }
}

#[derive(Subcommand, Debug)]
enum PubsubCommand {
    /// Manage topics and publish to them (like `gcloud pubsub topics`).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage subscriptions and receive from them (like `gcloud pubsub subscriptions`).
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// Pull messages from a subscription (`subscriptions pull`).
    Pull(PullArgs),
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// List the topics of a project, those registries created included.
    List {
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Create a topic.
    Create {
        /// Topic id or full name `projects/P/topics/T`.
        topic: String,
    },
    /// Show a topic.
    Describe {
        /// Topic id or full name.
        topic: String,
    },
    /// Delete a topic; its subscriptions stay, detached from it.
    Delete {
        /// Topic id or full name.
        topic: String,
    },
    /// Publish one message.
    Publish {
        /// Topic id or full name.
        topic: String,
        /// The message body, as text.
        #[arg(long)]
        message: Option<String>,
        /// Attributes, `KEY=VALUE[,KEY=VALUE...]`; repeatable.
        #[arg(long = "attribute", value_name = "KEY=VALUE,...")]
        attributes: Vec<String>,
        /// Messages with the same ordering key reach ordered subscriptions in publish order.
        #[arg(long)]
        ordering_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum SubscriptionsCommand {
    /// List the subscriptions of a project.
    List {
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Create a subscription; it receives what is published to its topic from now on.
    Create {
        /// Subscription id or full name `projects/P/subscriptions/S`.
        subscription: String,
        /// The topic: an id in the subscription's project, or a full name.
        #[arg(long)]
        topic: String,
        /// Seconds a pulled message waits for its acknowledgement before it comes again (10-600).
        #[arg(long)]
        ack_deadline: Option<i32>,
        /// Deliver only messages whose attributes match, e.g. `attributes.kind = "alarm"`.
        #[arg(long)]
        filter: Option<String>,
        /// Deliver messages with the same ordering key in publish order.
        #[arg(long)]
        enable_message_ordering: bool,
        /// Where messages go after `--max-delivery-attempts` failed deliveries.
        #[arg(long, value_name = "TOPIC")]
        dead_letter_topic: Option<String>,
        /// Deliveries before a message goes to the dead-letter topic (5-100, default 5).
        #[arg(long, requires = "dead_letter_topic")]
        max_delivery_attempts: Option<i32>,
    },
    /// Show a subscription.
    Describe {
        /// Subscription id or full name.
        subscription: String,
    },
    /// Delete a subscription.
    Delete {
        /// Subscription id or full name.
        subscription: String,
    },
    /// Replay (or skip) messages: those published from TIME on are delivered again, earlier ones
    /// count as acknowledged.
    Seek {
        /// Subscription id or full name.
        subscription: String,
        /// An RFC 3339 time, e.g. 2024-05-01T12:00:00Z.
        #[arg(long)]
        time: String,
    },
    /// Acknowledge pulled messages by their ack ids.
    Ack {
        /// Subscription id or full name.
        subscription: String,
        /// Ack ids, comma-separated (as `pull` prints them).
        #[arg(long, value_delimiter = ',', required = true)]
        ack_ids: Vec<String>,
    },
    /// Pull messages (the same as `ferrocore pubsub pull`).
    Pull(PullArgs),
}

#[derive(Args, Debug)]
struct PullArgs {
    /// Subscription id or full name.
    subscription: String,
    /// Pull at most this many messages.
    #[arg(long, default_value_t = 1)]
    limit: i32,
    /// Acknowledge the messages once printed.
    #[arg(long, visible_alias = "ack")]
    auto_ack: bool,
    /// Answer at once when no message is waiting, instead of waiting a few seconds for one.
    #[arg(long)]
    no_wait: bool,
}

pub async fn run(args: PubsubArgs) -> Result<()> {
    let api = args.connection.api()?;
    let (project, out) = (&args.project, &args.output);
    match args.command {
        PubsubCommand::Topics { command } => topics(&api, project, out, command).await,
        PubsubCommand::Subscriptions { command } => subscriptions(&api, project, out, command).await,
        PubsubCommand::Pull(pull_args) => pull(&api, project, out, pull_args).await,
    }
}

/// Prints what a create, delete or update answered when JSON is asked for.
fn answer(out: &Output, value: &impl Serialize) -> Result<()> {
    if out.json() {
        out.resource(value)?;
    }
    Ok(())
}

async fn topics(api: &Api, project: &Project, out: &Output, command: TopicsCommand) -> Result<()> {
    match command {
        TopicsCommand::List { limit } => {
            let items = api.list_all::<ps::ListTopicsResponse>(&project.parent()?, "/topics", &[], limit).await?;
            out.list(&items, TOPIC_COLUMNS)?;
        }
        TopicsCommand::Create { topic } => {
            let name = project.topic(&topic)?;
            let created: ps::Topic = api.put(&name, &ps::Topic::default()).await?;
            status(format!("Created topic [{name}]."));
            answer(out, &created)?;
        }
        TopicsCommand::Describe { topic } => {
            let found: ps::Topic = api.get(&project.topic(&topic)?, "", &[]).await?;
            out.resource(&found)?;
        }
        TopicsCommand::Delete { topic } => {
            let name = project.topic(&topic)?;
            let deleted: Empty = api.delete(&name).await?;
            status(format!("Deleted topic [{name}]."));
            answer(out, &deleted)?;
        }
        TopicsCommand::Publish { topic, message, attributes, ordering_key } => {
            let name = project.topic(&topic)?;
            let attributes = parse_attributes(&attributes)?;
            if message.is_none() && attributes.is_empty() && ordering_key.is_none() {
                bail!("nothing to publish: give --message and/or --attribute");
            }
            let m = ps::PubsubMessage {
                data: message.unwrap_or_default().into(),
                attributes,
                ordering_key: ordering_key.unwrap_or_default(),
                ..Default::default()
            };
            let body = ps::PublishRequest { topic: String::new(), messages: vec![m] };
            let published: ps::PublishResponse = api.post(&name, ":publish", &body).await?;
            if out.json() {
                out.resource(&published)?;
            } else {
                out.list(&published.message_ids, &[("MESSAGE_ID", |id| id.clone())])?;
            }
        }
    }
    Ok(())
}

/// `k=v,k2=v2` (repeatable) as a map; a value may contain `=`.
fn parse_attributes(specs: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for part in specs.iter().flat_map(|s| s.split(',')).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("--attribute '{part}' is not KEY=VALUE");
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

async fn subscriptions(api: &Api, project: &Project, out: &Output, command: SubscriptionsCommand) -> Result<()> {
    match command {
        SubscriptionsCommand::List { limit } => {
            let parent = project.parent()?;
            let items = api.list_all::<ps::ListSubscriptionsResponse>(&parent, "/subscriptions", &[], limit).await?;
            out.list(&items, SUBSCRIPTION_COLUMNS)?;
        }
        SubscriptionsCommand::Create {
            subscription,
            topic,
            ack_deadline,
            filter,
            enable_message_ordering,
            dead_letter_topic,
            max_delivery_attempts,
        } => {
            let name = project.subscription(&subscription)?;
            // A topic id is in the subscription's project, as with gcloud.
            let in_project = Project { project: name.split('/').nth(1).map(str::to_owned) };
            // Flags not given stay 0 or empty, which the API reads as "the default".
            let dead_letter_policy = match dead_letter_topic {
                Some(t) => Some(ps::DeadLetterPolicy {
                    dead_letter_topic: in_project.topic(&t)?,
                    max_delivery_attempts: max_delivery_attempts.unwrap_or_default(),
                }),
                None => None,
            };
            let body = ps::Subscription {
                topic: in_project.topic(&topic)?,
                ack_deadline_seconds: ack_deadline.unwrap_or_default(),
                filter: filter.unwrap_or_default(),
                enable_message_ordering,
                dead_letter_policy,
                ..Default::default()
            };
            let created: ps::Subscription = api.put(&name, &body).await?;
            status(format!("Created subscription [{name}]."));
            answer(out, &created)?;
        }
        SubscriptionsCommand::Describe { subscription } => {
            let found: ps::Subscription = api.get(&project.subscription(&subscription)?, "", &[]).await?;
            out.resource(&found)?;
        }
        SubscriptionsCommand::Delete { subscription } => {
            let name = project.subscription(&subscription)?;
            let deleted: Empty = api.delete(&name).await?;
            status(format!("Deleted subscription [{name}]."));
            answer(out, &deleted)?;
        }
        SubscriptionsCommand::Seek { subscription, time } => {
            let name = project.subscription(&subscription)?;
            // Not a typed SeekRequest: its time is a Timestamp, which would have to be parsed
            // here, and the time goes as given so that the server judges it (INVALID_ARGUMENT, as
            // for any other field).
            let body = serde_json::json!({ "time": time });
            let sought: ps::SeekResponse = api.post(&name, ":seek", &body).await?;
            status(format!("Subscription [{}] now delivers the messages published since {time}.", last_id(&name)));
            answer(out, &sought)?;
        }
        SubscriptionsCommand::Ack { subscription, ack_ids } => {
            let name = project.subscription(&subscription)?;
            let count = ack_ids.len();
            let acked = acknowledge(api, &name, ack_ids).await?;
            status(format!("Acknowledged {count} message(s) on [{}].", last_id(&name)));
            answer(out, &acked)?;
        }
        SubscriptionsCommand::Pull(args) => pull(api, project, out, args).await?,
    }
    Ok(())
}

async fn pull(api: &Api, project: &Project, out: &Output, args: PullArgs) -> Result<()> {
    if args.limit < 1 {
        bail!("--limit must be at least 1");
    }
    let name = project.subscription(&args.subscription)?;
    let body = ps::PullRequest { max_messages: args.limit, return_immediately: args.no_wait, ..Default::default() };
    let pulled: ps::PullResponse = api.post(&name, ":pull", &body).await?;
    out.list(&pulled.received_messages, PULL_COLUMNS)?;
    if args.auto_ack && !pulled.received_messages.is_empty() {
        let ack_ids = pulled.received_messages.into_iter().map(|m| m.ack_id).collect();
        acknowledge(api, &name, ack_ids).await?;
    }
    Ok(())
}

async fn acknowledge(api: &Api, subscription: &str, ack_ids: Vec<String>) -> Result<Empty> {
    api.post(subscription, ":acknowledge", &ps::AcknowledgeRequest { subscription: String::new(), ack_ids }).await
}

const TOPIC_COLUMNS: &[Column<ps::Topic>] = &[("NAME", |t| t.name.clone()), ("LABELS", |t| pairs(&t.labels))];

const SUBSCRIPTION_COLUMNS: &[Column<ps::Subscription>] = &[
    ("NAME", |s| s.name.clone()),
    ("TOPIC", |s| s.topic.clone()),
    ("ACK_DEADLINE", |s| number(s.ack_deadline_seconds)),
    ("FILTER", |s| s.filter.clone()),
];

const PULL_COLUMNS: &[Column<ps::ReceivedMessage>] = &[
    // Text when the payload is printable UTF-8, else `base64:...`.
    ("DATA", |m| shorten(&bytes_text(m.message.as_ref().map(|m| &m.data[..]).unwrap_or_default()), 200)),
    ("MESSAGE_ID", |m| m.message.as_ref().map(|m| m.message_id.clone()).unwrap_or_default()),
    ("ATTRIBUTES", |m| m.message.as_ref().map(|m| pairs(&m.attributes)).unwrap_or_default()),
    ("ACK_ID", |m| m.ack_id.clone()),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_attributes() {
        let p = Project { project: Some("p".into()) };
        assert_eq!(p.topic("t1").unwrap(), "projects/p/topics/t1");
        assert_eq!(p.topic("projects/q/topics/x").unwrap(), "projects/q/topics/x");
        assert!(p.topic("projects/q/subscriptions/x").is_err());
        assert!(p.subscription("a/b").is_err());
        assert!(Project { project: None }.subscription("s").unwrap_err().to_string().contains("--project"));
        let a = parse_attributes(&["k=v,eq=a=b".into(), "empty=".into()]).unwrap();
        assert_eq!(pairs(&a), "empty=,eq=a=b,k=v");
        assert!(parse_attributes(&["nokey".into()]).is_err());
    }
}
