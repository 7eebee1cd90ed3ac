//! The example processor: a northbound `inspection` processor that answers
//! `com.example.{{name}}.CheckPart.v1` commands from the MES.
//!
//! The command ([`CheckPartCall`]) and its reply ([`CheckPartResponse`]) are
//! generated from `schemas/inspection.schema.json`. Commands arrive on
//! `app/inspection/commands` (or `app/inspection/{scope}/commands`); the reply
//! goes to the command's MQTT response topic with its correlation data.
//! Change the topics with `[processors.inspection]` in the configuration
//! (`prefix`, `wildcard_levels`, `response_topic`).

use crate::models::inspection::{CheckPartCall, CheckPartResponse};
use microdcs::{ErrorKind, HandlerError, Meta, Outcome, Processor, TopicBinding};

/// The processor's name (its `[processors.inspection]` configuration).
pub const NAME: &str = "inspection";

/// Nominal diameter of the part, in millimetres.
pub const NOMINAL_MM: f64 = 12.0;

/// Largest accepted deviation from [`NOMINAL_MM`], in millimetres.
pub const TOLERANCE_MM: f64 = 0.05;

/// The processor: one handler, for [`CheckPartCall`].
pub fn processor() -> Processor {
    Processor::northbound(NAME).handle(check_part).build()
}

/// Its topics when the configuration names none: prefix `app/inspection`,
/// one wildcard level for the scope.
pub fn default_binding() -> TopicBinding {
    let mut binding = TopicBinding::new("app/inspection");
    binding.wildcard_levels = 1;
    binding
}

/// The verdict for a measured diameter (millimetres): within
/// ±[`TOLERANCE_MM`] of [`NOMINAL_MM`], and the deviation.
pub fn verdict(diameter_mm: f64) -> (bool, f64) {
    let deviation = diameter_mm - NOMINAL_MM;
    (deviation.abs() <= TOLERANCE_MM, deviation)
}

/// Handles one command. The type of the first argument decides which
/// CloudEvent type the handler receives; the payload is already validated
/// against the generated type (a malformed one is answered with a
/// `PayloadInvalid` error reply by the runtime).
async fn check_part(cmd: CheckPartCall, meta: Meta) -> Result<Outcome, HandlerError> {
    if !cmd.diameter_mm.is_finite() || cmd.diameter_mm <= 0.0 {
        return Err(HandlerError::terminal(
            ErrorKind::PayloadInvalid,
            format!(
                "DiameterMm must be a positive number, not {}",
                cmd.diameter_mm
            ),
        ));
    }
    let (passed, deviation_mm) = verdict(cmd.diameter_mm);
    tracing::info!(id = %meta.event.id, serial = %*cmd.serial_number, passed, deviation_mm, "part checked");
    Ok(Outcome::reply(&CheckPartResponse {
        serial_number: cmd.serial_number.to_string(),
        passed,
        deviation_mm,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diameter_within_tolerance_passes() {
        assert!(verdict(12.0).0);
        assert!(verdict(12.04).0);
        assert!(!verdict(12.06).0);
        assert!(!verdict(11.9).0);
    }
}
