//! The webhook sink: the station's job status and progress events as
//! CloudEvents over HTTP (binary mode, through the CloudEvents SDK's HTTP
//! binding), signed, retried, in order per job, at least once, for MES
//! systems and dashboards that only take HTTP (feature `cloudevents`,
//! `[webhooks]` settings, README "Webhooks").
//!
//! Where the events come from: every applied job change is an entry of its
//! scope's change stream in Redis, written by `job_apply.lua` in the same
//! step as the change, by whichever replica made it. The sink follows
//! those streams, like the MES publisher, on one replica at a time (a
//! Redis lock, `P:webhook:lock`): so every change
//! gives exactly one webhook event, in the order the job went through its
//! changes, whichever replica handled the command, and none is lost when a
//! replica dies between the change and an MQTT publish (DESIGN.md, "Why do
//! webhooks follow the change stream?").
//!
//! Per change the sink queues one delivery per configured URL in a Redis
//! list of that URL and job (`P:{S}:webhook:q:{target}:{job}`), moving its
//! stream cursor in the same script, then one task per non-empty queue
//! delivers the head until it is accepted (2xx) or its attempts are used
//! up (then it is dead-lettered under the processor name `webhook`,
//! counted in `microdcs.webhook.deliveries{outcome="dead_lettered"}`, and
//! logged), and goes on with the next. A job whose receiver fails holds up
//! only its own queue. A restarted station (or the replica that takes the
//! lock over) finds the queues and cursors in Redis and goes on where the
//! last one stopped; a delivery whose answer was lost is sent again, with
//! the same `ce-id`.
//!
//! `https://` receivers (feature `tls`) are trusted by `webhooks.tls_ca_path`
//! or the system's CA certificates, optionally with a client certificate;
//! a TLS failure is a failed attempt whose reason names the CA file or the
//! refused client certificate (`client`, DESIGN.md "Why does the webhook
//! client bring its own rustls configuration?").

mod client;
mod deliver;
mod request;
mod signature;
mod sink;

pub use signature::{
    sign, verify, VerifyError, DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
pub(crate) use sink::{WebhookSettings, WebhookSink};

/// The processor name webhook dead letters are kept under
/// (`microdcs dlq list --processor webhook`).
pub const DEAD_LETTER_PROCESSOR: &str = "webhook";
