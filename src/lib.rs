#![doc = include_str!("lib.md")]

mod app;
mod binding;
pub mod config;
mod dedupe;
pub mod dlq;
pub mod envelope;
mod error;
pub mod health;
pub mod http;
pub mod inspect;
pub mod jobs;
pub mod metrics;
pub mod models;
#[cfg(feature = "opcua")]
mod opcua;
mod processor;
mod publisher;
mod redis;
mod runtime;
pub mod sfc;
#[cfg(feature = "sim")]
pub mod sim;
mod singleton;
pub mod station;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tls;
pub mod transport;
pub mod validation;
#[cfg(feature = "cloudevents")]
pub mod webhook;

pub use app::{
    App, AppBuilder, AppError, Redis, RedisClient, RedisConnection, RedisTls, Shutdown,
    ShutdownHandle,
};
pub use envelope::{CloudEvent, ContentType, CorrelationId, EventType, MethodCall};
pub use error::{ErrorKind, HandlerError, ResultExt};
pub use metrics::{Metrics, MetricsSnapshot};
pub use processor::{
    Emit, Emitter, FromContext, Handler, IntoOutcome, Meta, Outcome, Payload, Processor,
    ProcessorBuilder, RequestContext, Scope, State,
};
pub use transport::{Direction, Intent, TopicBinding};
