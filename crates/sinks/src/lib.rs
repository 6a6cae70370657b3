//! Telemetry destinations behind [`ferrocore_core::sink::Sink`], and the topic stores among them
//! behind its read side, [`ferrocore_core::topics::TopicSource`].
//!
//! * [`log`]: the embedded topic log in the data directory, the default destination of every
//!   topic, the source its readers (REST, Pub/Sub, the CLI's tail) read, and the outbox of the
//!   external sinks.
//! * [`destination`]: the contract of an external system: check a URL at start, open a target per
//!   topic, deliver batches in order and say how far they were confirmed.
//! * [`spec`]: `--sink 'TOPICS=URL'` entries, checked at start; [`forward`]: the forwarders that
//!   read each topic at a durable cursor and deliver it, with back-off, retention holds and status;
//!   [`leader`]: in a cluster sharing one log, each sink forwarded by the one node holding its
//!   lease.
//! * one module per external system: [`pubsub`] (Google Cloud Pub/Sub), [`nats`] (JetStream),
//!   [`amqp`] (RabbitMQ), [`redis`] (Streams), [`webhook`] (Pub/Sub push format).

pub mod amqp;
pub mod destination;
pub mod forward;
pub mod leader;
pub mod log;
pub mod nats;
pub mod pubsub;
pub mod redis;
pub mod spec;
pub mod webhook;
