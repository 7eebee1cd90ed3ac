//! Replies over MQTT: the answer to a request on its Response Topic with
//! its Correlation Data, the error reply of a failed one, and the replay of
//! a stored reply to a duplicate (built by `transport::replies`).

use super::MqttTransport;
use crate::binding::mqtt::ReplyTo;
use crate::binding::port::{Outgoing, TransportError};
use crate::dedupe::StoredReply;
use crate::envelope::CloudEvent;
use crate::error::HandlerError;
use crate::processor::ReplyBody;
use crate::transport::replies::{failure, replayed, success};
use tracing::warn;

impl MqttTransport {
    /// Builds the reply of a successful handler and sends it when the
    /// request asked for one; returns what to keep for duplicates.
    pub(super) async fn reply(
        &self,
        req: &CloudEvent,
        body: ReplyBody,
        to: Option<&ReplyTo>,
    ) -> Result<StoredReply, HandlerError> {
        let (reply, kept) = success(&self.settings.source, req, body)?;
        if let Some(to) = to {
            self.publish_reply(reply, to).await?;
        }
        Ok(kept)
    }

    /// Answers a duplicate with the reply its first delivery got, sent to
    /// the duplicate's Response Topic with its Correlation Data.
    pub(super) async fn replay_reply(&self, req: &CloudEvent, stored: StoredReply, to: &ReplyTo) {
        let reply = replayed(&self.settings.source, req, stored);
        if let Err(e) = self.publish_reply(reply, to).await {
            warn!(error = %e, "cannot replay the reply to a duplicate");
        }
    }

    /// Sends the error reply to `req` when it has a Response Topic.
    pub(super) async fn send_error_reply(
        &self,
        req: &CloudEvent,
        to: Option<&ReplyTo>,
        e: &HandlerError,
    ) {
        let Some(to) = to else { return };
        let reply = failure(&self.settings.source, req, e);
        if let Err(err) = self.publish_reply(reply, to).await {
            warn!(error = %err, "cannot send error reply");
        }
    }

    async fn publish_reply(&self, reply: CloudEvent, to: &ReplyTo) -> Result<(), TransportError> {
        let mut msg = Outgoing::new(to.topic.clone(), reply);
        msg.correlation_data = to.correlation_data.clone();
        self.encode_and_send(msg).await?;
        self.metrics.replies();
        if let Some(i) = crate::metrics::instruments() {
            i.reply(&self.name);
        }
        Ok(())
    }
}
