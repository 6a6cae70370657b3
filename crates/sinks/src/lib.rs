//! Telemetry destinations behind [`ferrocore_core::sink::Sink`], and the topic stores among them
//! behind its read side, [`ferrocore_core::topics::TopicSource`].
//!
//! * [`log`]: the embedded topic log in the data directory, the default destination of every
//!   topic, and the source its readers (REST, Pub/Sub, the CLI's tail) read.
//!
//! Every sink meets the same contract: accept a batch for one topic and answer only once it is
//! durable, refuse it for good, or signal back-pressure; and report its health. External buses
//! (NATS, AMQP, webhooks) will sit beside `log`, each behind a cargo feature.

pub mod log;
