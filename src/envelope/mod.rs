//! The CloudEvent envelope: attributes, extension attributes, custom metadata
//! and the payload, independent of any transport.
//!
//! The MQTT mapping lives in [`crate::transport::binding`]; this module only knows the
//! CloudEvents 1.0 model plus the extension attributes of the wire contract.

mod codec;
mod correlation;
mod event;
mod event_type;
#[cfg(feature = "cloudevents")]
pub mod sdk;
mod text;
mod time;

pub use codec::{ContentType, DecodeError, EncodeError};
pub use correlation::CorrelationId;
pub use event::{is_attribute_name, AttributeError, CloudEvent, ATTRIBUTE_NAMES};
pub use event_type::{EventType, MethodCall};
pub use text::{
    check_mqtt_string, check_topic_level, check_topic_path, decode_level, encode_level,
    escape_for_mqtt, is_mqtt_char, is_mqtt_string, TextError, MAX_MQTT_STRING,
};
pub use time::{format_time, parse_time};
