//! One webhook request: the event in CloudEvents HTTP binary mode, built
//! by the SDK's HTTP binding, then signed.

use super::signature::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use cloudevents::binding::http::{builder::Builder, Serializer};
use cloudevents::message::BinaryDeserializer;
use cloudevents::Event;
use http::{HeaderValue, Request};

/// Collects the SDK binding's headers and body into an `http::Request`.
///
/// `ce-` header values are percent-encoded as the CloudEvents HTTP
/// binding asks (§3.1.3.2: every byte outside visible ASCII, the space,
/// `"` and `%`), so text such as a job id with umlauts arrives intact; the
/// SDK itself sends such bytes raw, which no receiver can read as text.
struct Adapter {
    builder: Option<http::request::Builder>,
    failed: Option<String>,
}

impl Adapter {
    fn map(&mut self, f: impl FnOnce(http::request::Builder) -> http::request::Builder) {
        self.builder = self.builder.take().map(f);
    }
}

impl Builder<Request<Vec<u8>>> for Adapter {
    fn header(&mut self, key: &str, value: HeaderValue) {
        if key.starts_with("ce-") {
            let encoded = percent_encode(value.as_bytes());
            match HeaderValue::from_str(&encoded) {
                Ok(v) => self.map(|b| b.header(key, v)),
                // Only visible ASCII is left: cannot happen.
                Err(e) => self.failed = Some(format!("header {key}: {e}")),
            }
        } else {
            self.map(|b| b.header(key, value));
        }
    }

    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<Request<Vec<u8>>> {
        let other = |m: String| cloudevents::message::Error::Other { source: m.into() };
        if let Some(m) = self.failed.take() {
            return Err(other(m));
        }
        self.builder
            .take()
            .ok_or_else(|| other("request built twice".into()))?
            .body(bytes)
            .map_err(|e| other(e.to_string()))
    }

    fn finish(&mut self) -> cloudevents::message::Result<Request<Vec<u8>>> {
        self.body(Vec::new())
    }
}

/// Percent-encodes what the CloudEvents HTTP binding does not allow raw in
/// a header value.
pub(crate) fn percent_encode(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for &b in v {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request for `event` to `url`, in binary mode, not signed yet.
///
/// # Errors
/// The SDK refused an attribute value as a header (a control character in
/// it), or `url` is not a URI.
pub(crate) fn binary_request(url: &str, event: Event) -> Result<Request<Vec<u8>>, String> {
    let adapter = Adapter {
        builder: Some(Request::post(url)),
        failed: None,
    };
    BinaryDeserializer::deserialize_binary(event, Serializer::new(adapter))
        .map_err(|e| format!("cannot build the HTTP request: {e}"))
}

/// Adds the [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`] for `timestamp`
/// (Unix seconds) to `req`.
pub(crate) fn sign_request(req: &mut Request<Vec<u8>>, secret: &[u8], timestamp: u64) {
    let id = req
        .headers()
        .get("ce-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let sig = sign(secret, &id, timestamp, req.body());
    let headers = req.headers_mut();
    headers.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
    if let Ok(v) = HeaderValue::from_str(&sig) {
        headers.insert(SIGNATURE_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CloudEvent;

    #[test]
    fn a_request_carries_the_event_in_binary_mode_and_is_signed() {
        let mut e = CloudEvent::new("t.v1", "station");
        e.id = "line-1:1-0".into();
        e.subject = Some("Linie-ä 100%".into());
        e.set_data(crate::ContentType::Json, &serde_json::json!({"a": 1}))
            .unwrap();
        let mut req = binary_request("http://127.0.0.1:9/hook", e.into()).unwrap();
        sign_request(&mut req, b"k", 1000);
        let h = req.headers();
        assert_eq!(h["ce-id"], "line-1:1-0");
        assert_eq!(h["ce-type"], "t.v1");
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-subject"], "Linie-%C3%A4%20100%25");
        assert_eq!(h["content-type"], "application/json; charset=utf-8");
        assert_eq!(req.body(), br#"{"a":1}"#);
        let sig = h[SIGNATURE_HEADER].to_str().unwrap();
        assert_eq!(sig, sign(b"k", "line-1:1-0", 1000, br#"{"a":1}"#));
        assert_eq!(h[TIMESTAMP_HEADER], "1000");
    }

    /// What a receiver does with a `ce-` header value.
    fn percent_decode(v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'%' {
                let hex = std::str::from_utf8(&v[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        out
    }

    proptest::proptest! {
        /// Any text (without control characters, which no header carries)
        /// survives the request and a receiver's percent-decoding.
        #[test]
        fn attribute_text_survives_percent_encoding(
            subject in "[^\\p{Cc}]{0,16}",
            custom in "[^\\p{Cc}]{1,16}",
            corr in "[^\\p{Cc}]{1,16}",
        ) {
            let mut e = CloudEvent::new("t.v1", "station/ä");
            e.subject = Some(subject);
            e.custom.insert("note".into(), custom);
            e.correlationid = Some(crate::CorrelationId::from_text(corr));
            let req = binary_request("http://127.0.0.1:9/hook", e.clone().into()).unwrap();
            let (parts, body) = req.into_parts();
            // A receiver (in any language) percent-decodes the `ce-` values
            // to UTF-8 text.
            let text: std::collections::BTreeMap<String, String> = parts
                .headers
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("ce-"))
                .map(|(k, v)| {
                    (k.as_str().to_owned(), String::from_utf8(percent_decode(v.as_bytes())).unwrap())
                })
                .collect();
            proptest::prop_assert_eq!(text.get("ce-subject"), e.subject.as_ref());
            proptest::prop_assert_eq!(text.get("ce-note"), e.custom.get("note"));
            proptest::prop_assert_eq!(text.get("ce-source").map(String::as_str), Some("station/ä"));
            proptest::prop_assert_eq!(
                text.get("ce-correlationid").map(String::as_str),
                e.correlationid.as_ref().map(|c| c.as_str())
            );
            proptest::prop_assert!(body.is_empty());
        }
    }
}
