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
use super::output::{Column, Output, payload_text, shorten, status, text};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

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
fn answer(out: &Output, value: &Value) {
    if out.json() {
        out.resource(value);
    }
}

async fn topics(api: &Api, project: &Project, out: &Output, command: TopicsCommand) -> Result<()> {
    match command {
        TopicsCommand::List { limit } => {
            let items = api.list_all(&project.parent()?, "/topics", "topics", &[], limit).await?;
            out.list(&items, TOPIC_COLUMNS);
        }
        TopicsCommand::Create { topic } => {
            let name = project.topic(&topic)?;
            let created = api.put(&name, &json!({})).await?;
            status(format!("Created topic [{name}]."));
            answer(out, &created);
        }
        TopicsCommand::Describe { topic } => out.resource(&api.get(&project.topic(&topic)?, "", &[]).await?),
        TopicsCommand::Delete { topic } => {
            let name = project.topic(&topic)?;
            let deleted = api.delete(&name).await?;
            status(format!("Deleted topic [{name}]."));
            answer(out, &deleted);
        }
        TopicsCommand::Publish { topic, message, attributes, ordering_key } => {
            let name = project.topic(&topic)?;
            let mut m = Map::new();
            if let Some(text) = message {
                m.insert("data".into(), base64::engine::general_purpose::STANDARD.encode(text).into());
            }
            let attributes = parse_attributes(&attributes)?;
            if !attributes.is_empty() {
                m.insert("attributes".into(), Value::Object(attributes));
            }
            if let Some(key) = ordering_key {
                m.insert("orderingKey".into(), key.into());
            }
            if m.is_empty() {
                bail!("nothing to publish: give --message and/or --attribute");
            }
            let published = api.post(&name, ":publish", &json!({"messages": [m]})).await?;
            if out.json() {
                out.resource(&published);
            } else {
                let ids = published["messageIds"].as_array().cloned().unwrap_or_default();
                out.list(
                    &ids.iter().map(|id| json!({"messageId": id})).collect::<Vec<_>>(),
                    &[("MESSAGE_ID", |v| text(&v["messageId"]))],
                );
            }
        }
    }
    Ok(())
}

/// `k=v,k2=v2` (repeatable) as a JSON object; a value may contain `=`.
fn parse_attributes(specs: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for part in specs.iter().flat_map(|s| s.split(',')).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("--attribute '{part}' is not KEY=VALUE");
        };
        out.insert(k.to_owned(), v.into());
    }
    Ok(out)
}

async fn subscriptions(api: &Api, project: &Project, out: &Output, command: SubscriptionsCommand) -> Result<()> {
    match command {
        SubscriptionsCommand::List { limit } => {
            let items = api.list_all(&project.parent()?, "/subscriptions", "subscriptions", &[], limit).await?;
            out.list(&items, SUBSCRIPTION_COLUMNS);
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
            let mut body = Map::new();
            body.insert("topic".into(), in_project.topic(&topic)?.into());
            if let Some(seconds) = ack_deadline {
                body.insert("ackDeadlineSeconds".into(), seconds.into());
            }
            if let Some(f) = filter {
                body.insert("filter".into(), f.into());
            }
            if enable_message_ordering {
                body.insert("enableMessageOrdering".into(), true.into());
            }
            if let Some(t) = dead_letter_topic {
                let mut policy = Map::new();
                policy.insert("deadLetterTopic".into(), in_project.topic(&t)?.into());
                if let Some(n) = max_delivery_attempts {
                    policy.insert("maxDeliveryAttempts".into(), n.into());
                }
                body.insert("deadLetterPolicy".into(), Value::Object(policy));
            }
            let created = api.put(&name, &Value::Object(body)).await?;
            status(format!("Created subscription [{name}]."));
            answer(out, &created);
        }
        SubscriptionsCommand::Describe { subscription } => {
            out.resource(&api.get(&project.subscription(&subscription)?, "", &[]).await?);
        }
        SubscriptionsCommand::Delete { subscription } => {
            let name = project.subscription(&subscription)?;
            let deleted = api.delete(&name).await?;
            status(format!("Deleted subscription [{name}]."));
            answer(out, &deleted);
        }
        SubscriptionsCommand::Seek { subscription, time } => {
            let name = project.subscription(&subscription)?;
            let sought = api.post(&name, ":seek", &json!({"time": time})).await?;
            status(format!("Subscription [{}] now delivers the messages published since {time}.", last_id(&name)));
            answer(out, &sought);
        }
        SubscriptionsCommand::Ack { subscription, ack_ids } => {
            let name = project.subscription(&subscription)?;
            let acked = api.post(&name, ":acknowledge", &json!({"ackIds": ack_ids})).await?;
            status(format!("Acknowledged {} message(s) on [{}].", ack_ids.len(), last_id(&name)));
            answer(out, &acked);
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
    let body = json!({"maxMessages": args.limit, "returnImmediately": args.no_wait});
    let pulled = api.post(&name, ":pull", &body).await?;
    let received = pulled["receivedMessages"].as_array().cloned().unwrap_or_default();
    out.list(&received, PULL_COLUMNS);
    if args.auto_ack && !received.is_empty() {
        let ack_ids: Vec<Value> = received.iter().map(|m| m["ackId"].clone()).collect();
        api.post(&name, ":acknowledge", &json!({"ackIds": ack_ids})).await?;
    }
    Ok(())
}

/// `k=v,k2=v2` from a JSON object of strings.
fn pairs(v: &Value) -> String {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

const TOPIC_COLUMNS: &[Column] = &[("NAME", |t| text(&t["name"])), ("LABELS", |t| pairs(&t["labels"]))];

const SUBSCRIPTION_COLUMNS: &[Column] = &[
    ("NAME", |s| text(&s["name"])),
    ("TOPIC", |s| text(&s["topic"])),
    ("ACK_DEADLINE", |s| text(&s["ackDeadlineSeconds"])),
    ("FILTER", |s| text(&s["filter"])),
];

const PULL_COLUMNS: &[Column] = &[
    // Text when the payload is printable UTF-8, else `base64:...`.
    ("DATA", |m| shorten(&payload_text(m["message"]["data"].as_str().unwrap_or_default()), 200)),
    ("MESSAGE_ID", |m| text(&m["message"]["messageId"])),
    ("ATTRIBUTES", |m| pairs(&m["message"]["attributes"])),
    ("ACK_ID", |m| text(&m["ackId"])),
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
        assert_eq!(Value::Object(a), json!({"k": "v", "eq": "a=b", "empty": ""}));
        assert!(parse_attributes(&["nokey".into()]).is_err());
    }
}
