//! Command ids, topic-level escaping and correlation ids: parse anything,
//! renderings are valid MQTT strings, round trips hold.
//!
//! The input is used whole (as Correlation Data bytes and, lossily, as
//! text), and split at newlines into a command id's scope, job and action,
//! so seeds are plain files.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use microdcs::envelope::{decode_level, encode_level, is_mqtt_string};
use microdcs::sfc::exec::parse_command_id;
use microdcs::CorrelationId;

/// How `Exec::command_id` builds an id.
fn command_id(scope: &str, job: &str, action: &str, activation: u32) -> String {
    format!(
        "{}/{}/{}/{activation}",
        encode_level(scope),
        encode_level(job),
        encode_level(action)
    )
}

fn check_level(s: &str) {
    let e = encode_level(s);
    assert!(is_mqtt_string(&e), "encode_level({s:?}) = {e:?}");
    assert!(
        !e.contains(['/', '+', '#']),
        "encode_level({s:?}) = {e:?} is not one topic level"
    );
    assert_eq!(decode_level(&e).as_deref(), Some(s), "level round trip");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let (scope, job, action) = (
        lines.next().unwrap_or_default().to_owned(),
        lines.next().unwrap_or_default().to_owned(),
        lines.next().unwrap_or_default().to_owned(),
    );
    let activation = data
        .iter()
        .fold(0u32, |a, b| a.rotate_left(5) ^ u32::from(*b));

    // Anything parses or not, without panicking; what parses builds back
    // into an id that parses the same.
    if let Some((scope, job, action, activation)) = parse_command_id(&text) {
        let again = command_id(&scope, &job, &action, activation);
        assert_eq!(
            parse_command_id(&again),
            Some((scope, job, action, activation)),
            "{:?} rebuilt as {again:?}",
            text
        );
    }
    let _ = decode_level(&text);

    // Every id the engine builds parses back into its parts (scope and job
    // are never empty).
    for s in [&scope, &job, &action] {
        check_level(s);
    }
    if !scope.is_empty() && !job.is_empty() {
        let id = command_id(&scope, &job, &action, activation);
        assert!(is_mqtt_string(&id));
        assert_eq!(
            parse_command_id(&id),
            Some((scope, job, action, activation)),
            "command id {id:?}"
        );
    }

    // Correlation Data: any bytes render as an MQTT string, keep their
    // bytes, and the rendering reads back as the same bytes.
    let raw = Bytes::copy_from_slice(data);
    let c = CorrelationId::from_bytes(raw.clone());
    assert!(is_mqtt_string(c.as_str()), "rendering {:?}", c.as_str());
    assert_eq!(c.as_bytes(), &raw);
    assert_eq!(
        CorrelationId::from_text(c.as_str()).as_bytes(),
        &raw,
        "from_text(from_bytes({raw:?}).as_str())"
    );

    // An attribute text: whatever it is, the rendering stays sendable.
    let t = CorrelationId::from_text(text.as_ref());
    assert!(is_mqtt_string(t.as_str()), "rendering {:?}", t.as_str());
});
