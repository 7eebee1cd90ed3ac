//! Webhook signatures: HMAC-SHA256 with the shared secret over the event
//! id, a timestamp and the body, so a receiver can check that a request
//! came from the station, was not altered, and is not an old one replayed.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header with the signing time: seconds since the Unix epoch, decimal.
pub const TIMESTAMP_HEADER: &str = "x-microdcs-timestamp";
/// Header with the signature: `v1=` and the lower-case hex HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-microdcs-signature";
/// Oldest (and furthest in the future) a timestamp should be accepted, in
/// seconds: the tolerance the README recommends for [`verify`].
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// The MAC over `{id}.{timestamp}.{body}`.
fn mac(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first), so
    // `new_from_slice` never fails; the fallback only satisfies the type.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The [`SIGNATURE_HEADER`] value for a request whose `ce-id` header is
/// `id` (as sent), signed at `timestamp` (Unix seconds), with `body`.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, id, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The timestamp header is not a number of seconds.
    #[error("the x-microdcs-timestamp header '{0}' is not a number of seconds")]
    BadTimestamp(String),
    /// The timestamp is further from `now` than the tolerance: an old
    /// request replayed (or a clock far off).
    #[error("the request was signed {age} s away from now, more than the {tolerance} s allowed")]
    Stale {
        /// Seconds between the timestamp and now.
        age: u64,
        /// The tolerance.
        tolerance: u64,
    },
    /// The signature does not match (wrong secret, or an altered id,
    /// timestamp or body).
    #[error("the x-microdcs-signature does not match the request")]
    Mismatch,
}

/// Checks a received request: `id` the `ce-id` header as received,
/// `timestamp` and `signature` the [`TIMESTAMP_HEADER`] and
/// [`SIGNATURE_HEADER`] values, `now` Unix seconds, `tolerance` the
/// largest accepted distance between the two (seconds). The comparison
/// is in constant time. A receiver that must reject replays within the
/// tolerance also remembers the `ce-id`s it accepted for that long.
///
/// # Errors
/// [`VerifyError`]: a timestamp that is not a number or too far from
/// `now`, or a signature that does not match.
///
/// # Example
///
/// (The same as in the README's "Webhooks".)
///
/// ```
/// use microdcs::webhook::{sign, verify, VerifyError};
///
/// let (secret, id, ts, body) = (b"s3cret", "line-1:1796011383262-0", 1_796_011_383, br#"{"JobOrder":{}}"#);
/// let signature = sign(secret, id, ts, body); // what the station sends
/// // The receiver, with the header values and the raw body:
/// assert_eq!(verify(secret, id, &ts.to_string(), &signature, body, ts + 2, 300), Ok(()));
/// assert!(matches!(
///     verify(secret, id, &ts.to_string(), &signature, body, ts + 3600, 300),
///     Err(VerifyError::Stale { .. })
/// ));
/// ```
pub fn verify(
    secret: &[u8],
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: u64,
    tolerance: u64,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.to_owned()))?;
    let age = now.abs_diff(ts);
    if age > tolerance {
        return Err(VerifyError::Stale { age, tolerance });
    }
    let hex = signature
        .trim()
        .strip_prefix("v1=")
        .ok_or(VerifyError::Mismatch)?;
    let tag = decode_hex(hex).ok_or(VerifyError::Mismatch)?;
    mac(secret, id, ts, body)
        .verify_slice(&tag)
        .map_err(|_| VerifyError::Mismatch)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_checks_out_only_unaltered_and_in_time() {
        let sig = sign(b"k", "id-1", 1000, b"body");
        assert_eq!(sig.len(), 3 + 64);
        assert_eq!(
            verify(b"k", "id-1", "1000", &sig, b"body", 1200, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"k", "id-1", "1000", &sig, b"bodx", 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", "id-2", "1000", &sig, b"body", 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", "id-1", "1001", &sig, b"body", 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", "id-1", "1000", &sig, b"body", 1301, 300),
            Err(VerifyError::Stale {
                age: 301,
                tolerance: 300
            })
        );
        assert!(matches!(
            verify(b"k", "id-1", "soon", &sig, b"body", 1000, 300),
            Err(VerifyError::BadTimestamp(_))
        ));
    }

    /// RFC 4231 test case 2, to pin the MAC itself.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut m = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let hex: String = m
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
