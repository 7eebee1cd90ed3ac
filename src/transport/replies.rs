//! The replies a request gets, whichever transport it came by: the
//! answer of a successful handler, the error reply of a failed one, and the
//! replay of a stored reply to a duplicate (wire contract §1 Replies, §6).
//! Pure builders; each transport sends them its own way (MQTT to the
//! Response Topic, MessagePack-RPC in the call's result).

use crate::dedupe::StoredReply;
use crate::envelope::{escape_for_mqtt, CloudEvent, ContentType};
use crate::error::{ErrorKind, HandlerError};
use crate::processor::ReplyBody;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;

/// The `type` of an error reply to a request that had no `type` of its own
/// (a CloudEvent needs one, and an empty one would be refused as input).
pub const ERROR_REPLY_TYPE: &str = "io.microdcs.error.v1";

/// The attributes every reply shares: the request's `type` (or
/// [`ERROR_REPLY_TYPE`] for a request that had none), its `id` as
/// `causationid` when it had one, its correlation, subject and trace
/// context. No attribute is ever empty.
pub(crate) fn skeleton(source: &str, req: &CloudEvent) -> CloudEvent {
    let ty = if req.ty.is_empty() {
        ERROR_REPLY_TYPE.to_owned()
    } else {
        req.ty.clone()
    };
    let mut reply = CloudEvent::new(ty, source.to_owned());
    reply.causationid = Some(req.id.clone()).filter(|id| !id.is_empty());
    reply.correlationid = req.correlationid.clone();
    reply.subject = req.subject.clone();
    reply.traceparent = req.traceparent.clone();
    reply.tracestate = req.tracestate.clone();
    reply
}

/// The reply of a successful handler, and what is kept of it to answer
/// duplicates.
///
/// # Errors
/// The handler's reply payload could not be encoded (terminal).
pub(crate) fn success(
    source: &str,
    req: &CloudEvent,
    body: ReplyBody,
) -> Result<(CloudEvent, StoredReply), HandlerError> {
    let data = body.data.map_err(|m| {
        HandlerError::terminal(
            ErrorKind::InternalLogicError,
            format!("cannot encode reply: {m}"),
        )
    })?;
    let mut reply = skeleton(source, req);
    reply.dataschema = body.dataschema;
    reply.data = Some(data);
    reply.datacontenttype = Some(ContentType::DEFAULT_HEADER.into());
    let kept = StoredReply {
        id: reply.id.clone(),
        dataschema: reply.dataschema.clone(),
        datacontenttype: reply.datacontenttype.clone(),
        data: reply.data.as_ref().map(|d| BASE64.encode(d)),
    };
    Ok((reply, kept))
}

/// The reply a duplicate gets: the first delivery's `id`, payload and
/// schema, with the duplicate's own correlation.
pub(crate) fn replayed(source: &str, req: &CloudEvent, stored: StoredReply) -> CloudEvent {
    let mut reply = skeleton(source, req);
    reply.id = stored.id;
    reply.dataschema = stored.dataschema;
    reply.datacontenttype = stored.datacontenttype;
    reply.data = stored
        .data
        .and_then(|d| BASE64.decode(d).ok())
        .map(Bytes::from);
    reply
}

/// The error reply to `req`. Messages and context quote what the client
/// sent (a job id, a property): escaped, so the reply is always a packet
/// MQTT allows.
pub(crate) fn failure(source: &str, req: &CloudEvent, e: &HandlerError) -> CloudEvent {
    let mut reply = skeleton(source, req);
    reply.mdcserrorkind = Some(e.kind().as_str().to_owned());
    reply.mdcserrormessage = Some(escape_for_mqtt(e.message()).into_owned());
    reply.mdcserrorcontext = e
        .context_entries()
        .iter()
        .map(|(k, v)| {
            (
                escape_for_mqtt(k).into_owned(),
                escape_for_mqtt(v).into_owned(),
            )
        })
        .collect();
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::CorrelationId;

    fn request() -> CloudEvent {
        let mut req = CloudEvent::new("t.cmd.v1", "mes");
        req.subject = Some("press".into());
        req.correlationid = Some(CorrelationId::from_text("c-1"));
        req.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        req
    }

    #[test]
    fn reply_names_its_request_and_keeps_its_correlation() {
        let req = request();
        let r = skeleton("station", &req);
        assert_eq!(r.ty, "t.cmd.v1");
        assert_eq!(r.source, "station");
        assert_eq!(r.causationid.as_deref(), Some(req.id.as_str()));
        assert_eq!(r.correlationid, req.correlationid);
        assert_eq!(r.subject, req.subject);
        assert_eq!(r.traceparent, req.traceparent);
        assert_ne!(r.id, req.id);
    }

    #[test]
    fn reply_to_a_request_without_type_or_id_has_no_empty_attribute() {
        let req = CloudEvent::new("", "");
        let mut req = req;
        req.id = String::new();
        let r = skeleton("station", &req);
        assert_eq!(r.ty, ERROR_REPLY_TYPE);
        assert_eq!(r.causationid, None);
    }

    #[test]
    fn stored_reply_replays_the_same_id_and_payload() {
        let req = request();
        let body = ReplyBody {
            dataschema: Some("urn:x".into()),
            data: Ok(Bytes::from_static(br#"{"A":1}"#)),
        };
        let (sent, kept) = success("station", &req, body).unwrap();
        let mut dup = request();
        dup.correlationid = Some(CorrelationId::from_text("c-2"));
        let again = replayed("station", &dup, kept);
        assert_eq!(again.id, sent.id);
        assert_eq!(again.data, sent.data);
        assert_eq!(again.dataschema, sent.dataschema);
        assert_eq!(again.datacontenttype, sent.datacontenttype);
        assert_eq!(again.correlationid, dup.correlationid);
    }

    #[test]
    fn unencodable_reply_is_a_terminal_error() {
        let body = ReplyBody {
            dataschema: None,
            data: Err("nan".into()),
        };
        let e = success("station", &request(), body).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InternalLogicError);
        assert!(!e.is_retryable());
    }

    #[test]
    fn error_reply_escapes_what_the_client_sent() {
        let e = HandlerError::terminal(ErrorKind::StateInvalid, "bad \u{0} job")
            .context("job\u{0}", "j\u{0}");
        let r = failure("station", &request(), &e);
        assert_eq!(r.mdcserrorkind.as_deref(), Some("STATE_INVALID"));
        assert!(!r.mdcserrormessage.unwrap().contains('\u{0}'));
        assert!(r
            .mdcserrorcontext
            .iter()
            .all(|(k, v)| !k.contains('\u{0}') && !v.contains('\u{0}')));
    }
}
