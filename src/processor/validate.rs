//! The schema check in front of every handler: the layer
//! [`Processor::dispatch`](super::Processor::dispatch) runs before the
//! handler, whatever transport delivered the message.

use crate::envelope::CloudEvent;
use crate::error::HandlerError;
use crate::validation::SchemaSet;
use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A processor's validation settings: its schemas, the types it does not
/// validate, and per type the violations its handlers answer themselves.
#[derive(Clone)]
pub(crate) struct Validation {
    pub(crate) schemas: SchemaSet,
    pub(crate) off: HashSet<String>,
    /// Per type: members whose absence the handler answers.
    pub(crate) missing_ok: HashMap<String, Vec<&'static str>>,
    /// Per type: instance paths the handler reads in its own, more lenient
    /// way (a violation located exactly there is its business).
    pub(crate) lenient_at: HashMap<String, Vec<&'static str>>,
}

impl Validation {
    pub(crate) fn new() -> Validation {
        Validation {
            schemas: SchemaSet::builtin(),
            off: HashSet::new(),
            missing_ok: HashMap::new(),
            lenient_at: HashMap::new(),
        }
    }

    /// Checks `event`'s payload against the schema of the handler's payload
    /// type (`handler_schema`), or for a fallback handler the schema its
    /// `dataschema` names. Passes what it cannot check: a type switched off,
    /// a schema the set does not know, no data, or data that does not
    /// decode (the handler reports that, as before validation existed).
    ///
    /// # Errors
    /// A terminal `PAYLOAD_INVALID` listing every violation.
    pub(crate) fn check(
        &self,
        event: &CloudEvent,
        handler_schema: Option<&str>,
    ) -> Result<(), HandlerError> {
        if self.off.contains(&event.ty) {
            return Ok(());
        }
        let Some(uri) = handler_schema.or(event.dataschema.as_deref()) else {
            return Ok(());
        };
        if !self.schemas.knows(uri) {
            return Ok(());
        }
        let Some(data) = event.data.as_ref().filter(|d| !d.is_empty()) else {
            return Ok(());
        };
        // MessagePack is decoded to the same JSON value the schema speaks
        // of; a payload that is not JSON/MessagePack at all is left to the
        // handler's decoder and its error.
        let Ok(value) = event.content_type().and_then(|ct| ct.decode::<Value>(data)) else {
            return Ok(());
        };
        let missing_ok = self.missing_ok.get(&event.ty);
        let lenient_at = self.lenient_at.get(&event.ty);
        let exempt = |e: &ValidationError<'_>| {
            let absent_ok = match e.kind() {
                ValidationErrorKind::Required { property } => {
                    missing_ok.is_some_and(|m| property.as_str().is_some_and(|p| m.contains(&p)))
                }
                _ => false,
            };
            absent_ok || lenient_at.is_some_and(|l| l.contains(&e.instance_path().as_str()))
        };
        self.schemas
            .check_except(uri, &value, exempt)
            .map_err(|v| v.to_handler_error(&event.ty))
    }
}
