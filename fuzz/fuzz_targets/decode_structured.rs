//! A structured-mode body (`application/cloudevents+json`) → CloudEvent.
#![no_main]

mod shared;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use microdcs::transport::binding::{decode, STRUCTURED_CONTENT_TYPE};

fuzz_target!(|body: &[u8]| {
    let mut props = shared::base_properties();
    // The body alone must carry the required attributes.
    props.user_properties.clear();
    props.content_type = Some(STRUCTURED_CONTENT_TYPE.to_owned());
    props.response_topic = Some("fuzz/replies".to_owned());
    props.correlation_data = Some(Bytes::from_static(b"fuzz-1"));
    let correlation = props.correlation_data.clone();
    match decode(
        "app/jobs/commands",
        Bytes::copy_from_slice(body),
        Some(&props),
    ) {
        Ok(inbound) => shared::check_accepted(&inbound, correlation.as_ref()),
        Err(rejected) => shared::check_rejected(&rejected),
    }
});
