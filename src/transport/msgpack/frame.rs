//! MessagePack-RPC framing (wire contract §5): where one frame ends in a
//! byte stream, and what a frame says.
//!
//! MessagePack-RPC has no length prefix: a frame is one MessagePack value.
//! [`scan`] walks the value's headers without building it (iteratively, so
//! no nesting can exhaust the stack) to learn whether the buffer holds a
//! whole frame, how long it is, and whether it can still fit in the
//! maximum frame size: a peer that announces a 4 GiB string is refused as
//! soon as the header arrives, not after the server buffered it.

use super::value::Value;

/// `[0, msgid, method, params]`
pub(crate) const REQUEST: u64 = 0;
/// `[1, msgid, error, result]`
pub(crate) const RESPONSE: u64 = 1;
/// `[2, method, params]`
pub(crate) const NOTIFICATION: u64 = 2;

/// What the buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scan {
    /// One whole frame of this many bytes at the start of the buffer.
    Frame(usize),
    /// Not yet a whole frame: read more.
    Incomplete,
    /// The frame at the start is (or announces to be) at least this many
    /// bytes, more than the maximum.
    TooLarge(usize),
    /// The bytes are not MessagePack (a reserved marker): nothing after
    /// them can be found.
    Invalid(String),
}

/// Finds the end of the first MessagePack value in `buf`, allowing at
/// most `max` bytes for it (from scratch: see [`Scanner`]).
#[cfg(test)]
pub(crate) fn scan(buf: &[u8], max: usize) -> Scan {
    Scanner::default().scan(buf, max)
}

/// Where the scan of a frame stopped for want of bytes, so the next read
/// resumes there: a frame trickling in over many small TCP segments is
/// walked once, not once per segment (which made one slow client's
/// megabytes of small items cost quadratic CPU on a runtime thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scanner {
    /// Where the next value to read starts.
    pos: usize,
    /// Values still to be read, at least one byte each.
    pending: u64,
    /// Value headers read so far (for the tests' bound on the work).
    #[cfg(test)]
    steps: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            pos: 0,
            pending: 1,
            #[cfg(test)]
            steps: 0,
        }
    }
}

impl Scanner {
    /// Finds the end of the first MessagePack value in `buf`, allowing at
    /// most `max` bytes for it, going on from where the last call stopped.
    /// `buf` must be the last call's buffer with bytes appended; after a
    /// [`Scan::Frame`] the scanner starts over (the caller removes the
    /// frame from the buffer).
    pub(crate) fn scan(&mut self, buf: &[u8], max: usize) -> Scan {
        match scan_from(self, buf, max) {
            Scan::Frame(n) => {
                *self = Scanner::default();
                Scan::Frame(n)
            }
            other => other,
        }
    }
}

fn scan_from(state: &mut Scanner, buf: &[u8], max: usize) -> Scan {
    while state.pending > 0 {
        let pos = state.pos;
        let Some(&m) = buf.get(pos) else {
            return Scan::Incomplete;
        };
        #[cfg(test)]
        {
            state.steps += 1;
        }
        let len = |n: usize| -> Option<u64> {
            let b = buf.get(pos + 1..pos + 1 + n)?;
            Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        };
        // (header bytes, payload bytes, values contained)
        let (head, body, items): (usize, Option<u64>, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, Some(0), 0),
            0x80..=0x8f => (1, Some(0), 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (1, Some(0), u64::from(m & 0x0f)),
            0xa0..=0xbf => (1, Some(u64::from(m & 0x1f)), 0),
            0xc1 => return Scan::Invalid("0xc1 is not a MessagePack marker".into()),
            0xc4 | 0xd9 => (2, len(1), 0),
            0xc5 | 0xda => (3, len(2), 0),
            0xc6 | 0xdb => (5, len(4), 0),
            0xc7 => (3, len(1), 0),
            0xc8 => (4, len(2), 0),
            0xc9 => (6, len(4), 0),
            0xca => (1, Some(4), 0),
            0xcb => (1, Some(8), 0),
            0xcc | 0xd0 => (1, Some(1), 0),
            0xcd | 0xd1 => (1, Some(2), 0),
            0xce | 0xd2 => (1, Some(4), 0),
            0xcf | 0xd3 => (1, Some(8), 0),
            0xd4 => (2, Some(1), 0),
            0xd5 => (2, Some(2), 0),
            0xd6 => (2, Some(4), 0),
            0xd7 => (2, Some(8), 0),
            0xd8 => (2, Some(16), 0),
            0xdc => match len(2) {
                Some(n) => (3, Some(0), n),
                None => return Scan::Incomplete,
            },
            0xdd => match len(4) {
                Some(n) => (5, Some(0), n),
                None => return Scan::Incomplete,
            },
            0xde => match len(2) {
                Some(n) => (3, Some(0), 2 * n),
                None => return Scan::Incomplete,
            },
            0xdf => match len(4) {
                Some(n) => (5, Some(0), 2 * n),
                None => return Scan::Incomplete,
            },
        };
        let Some(body) = body else {
            return Scan::Incomplete;
        };
        let pending = (state.pending - 1).saturating_add(items);
        // Every pending value takes at least one more byte.
        let end = (pos as u64)
            .saturating_add(head as u64)
            .saturating_add(body);
        if end.saturating_add(pending) > max as u64 {
            return Scan::TooLarge(
                usize::try_from(end.saturating_add(pending)).unwrap_or(usize::MAX),
            );
        }
        // Within `max`, which is a usize.
        state.pos = end as usize;
        state.pending = pending;
    }
    if state.pos > buf.len() {
        Scan::Incomplete
    } else {
        Scan::Frame(state.pos)
    }
}

/// One frame a client sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// `[0, msgid, method, params]`: answered with a response.
    Request {
        msgid: u64,
        method: String,
        params: Vec<Value>,
    },
    /// `[2, method, params]`: never answered.
    Notification { method: String, params: Vec<Value> },
    /// `[1, msgid, error, result]`: the server sends no requests, so a
    /// response is logged and dropped.
    Response { msgid: u64 },
}

/// A frame that is MessagePack but not MessagePack-RPC.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Malformed {
    /// The request's msgid, when it could be read: the error is answered
    /// under it. Echoed as sent, also when it is no unsigned 32-bit
    /// integer (the error then says so): a client is never left waiting
    /// for an answer that will not come.
    pub(crate) msgid: Option<Value>,
    /// What is wrong.
    pub(crate) message: String,
}

impl Frame {
    /// Interprets one decoded value.
    ///
    /// # Errors
    /// Not an array, a wrong arity, a wrong type in a field.
    pub(crate) fn parse(v: Value) -> Result<Frame, Malformed> {
        let bad = |msgid, message: String| Malformed { msgid, message };
        let Value::Array(items) = v else {
            return Err(bad(
                None,
                format!("a frame must be an array, found {}", v.kind()),
            ));
        };
        let kind = items.first().and_then(Value::as_u64);
        let msgid = match kind {
            Some(REQUEST) => items
                .get(1)
                .and_then(Value::as_u64)
                .filter(|id| *id <= u64::from(u32::MAX)),
            _ => None,
        };
        // Echoed when it is a scalar of reasonable size (a client may
        // match on it); a container is no id anyone waits on.
        let sent_msgid = match (kind, items.get(1)) {
            (Some(REQUEST), Some(Value::Array(_) | Value::Map(_) | Value::Bin(_))) => None,
            (Some(REQUEST), Some(Value::Str(t))) if t.len() > 64 => None,
            (Some(REQUEST), v) => v.cloned(),
            _ => None,
        };
        let found = match items.get(1) {
            Some(Value::UInt(n)) => n.to_string(),
            Some(Value::Int(n)) => n.to_string(),
            Some(v) => v.kind().to_owned(),
            None => "nothing".to_owned(),
        };
        let mut it = items.into_iter();
        let n = it.len();
        let _ = it.next();
        match kind {
            Some(REQUEST) => {
                let Some(id) = msgid else {
                    return Err(bad(
                        sent_msgid,
                        format!(
                            "a request's msgid must be an unsigned 32-bit integer, found {found}"
                        ),
                    ));
                };
                if n != 4 {
                    return Err(bad(
                        sent_msgid,
                        format!("a request has 4 elements, found {n}"),
                    ));
                }
                let _ = it.next();
                let (method, params) =
                    method_params(it.next(), it.next()).map_err(|m| bad(sent_msgid, m))?;
                Ok(Frame::Request {
                    msgid: id,
                    method,
                    params,
                })
            }
            Some(NOTIFICATION) => {
                if n != 3 {
                    return Err(bad(
                        None,
                        format!("a notification has 3 elements, found {n}"),
                    ));
                }
                let (method, params) =
                    method_params(it.next(), it.next()).map_err(|m| bad(None, m))?;
                Ok(Frame::Notification { method, params })
            }
            Some(RESPONSE) if n == 4 => Ok(Frame::Response {
                msgid: it.next().and_then(|v| v.as_u64()).unwrap_or(0),
            }),
            _ => Err(bad(
                None,
                "a frame starts with its type: 0 (request), 1 (response) or 2 (notification)"
                    .into(),
            )),
        }
    }
}

fn method_params(
    method: Option<Value>,
    params: Option<Value>,
) -> Result<(String, Vec<Value>), String> {
    let method = match method {
        Some(Value::Str(m)) => m,
        other => {
            return Err(format!(
                "the method must be a string, found {}",
                other.as_ref().map_or("nothing", Value::kind)
            ))
        }
    };
    let params = match params {
        Some(Value::Array(p)) => p,
        other => {
            return Err(format!(
                "the params of '{method}' must be an array, found {}",
                other.as_ref().map_or("nothing", Value::kind)
            ))
        }
    };
    Ok((method, params))
}

/// `[1, msgid, error, result]`.
pub(crate) fn response(msgid: u64, result: Result<Value, String>) -> Vec<u8> {
    response_to(Value::UInt(msgid), result)
}

/// [`response`] under the msgid exactly as the request had it.
pub(crate) fn response_to(msgid: Value, result: Result<Value, String>) -> Vec<u8> {
    let (error, result) = match result {
        Ok(r) => (Value::Nil, r),
        Err(e) => (Value::Str(e), Value::Nil),
    };
    Value::Array(vec![Value::UInt(RESPONSE), msgid, error, result]).encode()
}

/// `[2, method, params]`.
pub(crate) fn notification(method: &str, params: Vec<Value>) -> Vec<u8> {
    Value::Array(vec![
        Value::UInt(NOTIFICATION),
        Value::str(method),
        Value::Array(params),
    ])
    .encode()
}

/// The msgid of a request whose frame is too large to read: only its
/// first bytes (`[0, msgid, …`) are looked at.
pub(crate) fn msgid_of_prefix(buf: &[u8]) -> Option<u64> {
    let mut rd = buf;
    let n = rmp::decode::read_array_len(&mut rd).ok()?;
    if n != 4 {
        return None;
    }
    let kind: u64 = rmp::decode::read_int(&mut rd).ok()?;
    if kind != REQUEST {
        return None;
    }
    let id: u64 = rmp::decode::read_int(&mut rd).ok()?;
    (id <= u64::from(u32::MAX)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> Value {
        Value::Array(vec![
            Value::UInt(REQUEST),
            Value::UInt(id),
            Value::str("publish"),
            Value::Array(vec![
                Value::Map(vec![(Value::str("data"), Value::Bin(vec![1; 300]))]),
                Value::Nil,
            ]),
        ])
    }

    #[test]
    fn scan_finds_each_frame_of_a_stream_and_waits_for_the_rest() {
        let one = request(1).encode();
        let mut stream = one.clone();
        stream.extend(request(2).encode());
        assert_eq!(scan(&stream, 1 << 20), Scan::Frame(one.len()));
        for cut in 0..one.len() {
            assert_eq!(scan(&one[..cut], 1 << 20), Scan::Incomplete, "cut at {cut}");
        }
        let big = Value::Array(vec![
            Value::Map(vec![(Value::Int(-1), Value::Float(2.0))]),
            Value::Str("x".repeat(70_000)),
            Value::Bin(vec![0; 300]),
            Value::Array((0..20).map(Value::UInt).collect()),
        ])
        .encode();
        assert_eq!(scan(&big, 1 << 20), Scan::Frame(big.len()));
    }

    #[test]
    fn a_frame_trickling_in_byte_by_byte_is_walked_once() {
        // 20 000 small items, fed one byte at a time: resuming, the scan
        // reads each value header about once (from scratch it was 200
        // million reads).
        let frame = Value::Array(vec![
            Value::UInt(REQUEST),
            Value::UInt(3),
            Value::str("publish"),
            Value::Array((0..20_000).map(|_| Value::Nil).collect()),
        ])
        .encode();
        let mut scanner = Scanner::default();
        for cut in 1..frame.len() {
            assert_eq!(scanner.scan(&frame[..cut], 1 << 20), Scan::Incomplete);
        }
        let steps = scanner.steps;
        assert!(steps < 2 * frame.len() as u64, "{steps} steps");
        assert_eq!(scanner.scan(&frame, 1 << 20), Scan::Frame(frame.len()));
        // And starts over for the next frame.
        let mut two = frame.clone();
        two.extend(&frame);
        assert_eq!(
            scanner.scan(&two[frame.len()..], 1 << 20),
            Scan::Frame(frame.len())
        );
        // Whatever the cuts, the same answer as a scan from scratch.
        let small = Value::Array(vec![
            Value::Map(vec![(Value::str("k"), Value::Bin(vec![1; 300]))]),
            Value::Str("x".repeat(70_000)),
        ])
        .encode();
        for step in [1, 2, 3, 7, 64, 4096] {
            let mut s = Scanner::default();
            let mut end = 0;
            let got = loop {
                end = (end + step).min(small.len());
                match s.scan(&small[..end], 1 << 20) {
                    Scan::Incomplete if end < small.len() => continue,
                    other => break other,
                }
            };
            assert_eq!(got, Scan::Frame(small.len()), "step {step}");
        }
    }

    #[test]
    fn scan_refuses_what_announces_more_than_the_maximum() {
        let one = request(1).encode();
        assert!(matches!(scan(&one, 100), Scan::TooLarge(n) if n > 100));
        // A str32 header announcing 4 GiB: refused from its 5 bytes.
        assert!(matches!(
            scan(&[0xdb, 0xff, 0xff, 0xff, 0xff], 1024),
            Scan::TooLarge(_)
        ));
        // An array32 of 4 billion nils.
        assert!(matches!(
            scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1024),
            Scan::TooLarge(_)
        ));
        assert!(matches!(scan(&[0xc1], 1024), Scan::Invalid(_)));
        assert_eq!(msgid_of_prefix(&one[..8]), Some(1));
    }

    #[test]
    fn frames_are_parsed_and_malformed_ones_keep_a_readable_msgid() {
        assert!(matches!(
            Frame::parse(request(9)).unwrap(),
            Frame::Request { msgid: 9, ref method, .. } if method == "publish"
        ));
        let n = Value::Array(vec![
            Value::UInt(NOTIFICATION),
            Value::str("heartbeat"),
            Value::Array(vec![Value::UInt(1)]),
        ]);
        assert!(matches!(
            Frame::parse(n).unwrap(),
            Frame::Notification { .. }
        ));
        let no_array = Frame::parse(Value::UInt(3)).unwrap_err();
        assert_eq!(no_array.msgid, None);
        let arity = Frame::parse(Value::Array(vec![
            Value::UInt(REQUEST),
            Value::UInt(4),
            Value::str("publish"),
        ]))
        .unwrap_err();
        assert_eq!(arity.msgid, Some(Value::UInt(4)));
        let method = Frame::parse(Value::Array(vec![
            Value::UInt(REQUEST),
            Value::UInt(5),
            Value::UInt(1),
            Value::Array(vec![]),
        ]))
        .unwrap_err();
        assert_eq!(method.msgid, Some(Value::UInt(5)));
        assert!(method.message.contains("method"), "{}", method.message);
        let params = Frame::parse(Value::Array(vec![
            Value::UInt(REQUEST),
            Value::UInt(6),
            Value::str("publish"),
            Value::Nil,
        ]))
        .unwrap_err();
        assert_eq!(params.msgid, Some(Value::UInt(6)));
    }
}
