//! Method return status (a UInt64 bit mask in OPC 40001-3).

use crate::models::return_status as bits;

/// The `ReturnStatus` values the job methods answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ReturnStatus {
    /// Success.
    NoError = bits::NO_ERROR,
    /// No job with that id in the scope.
    UnknownJobOrderId = bits::UNKNOWN_JOB_ORDER_ID,
    /// The method is not allowed in the job's current state.
    InvalidJobOrderStatus = bits::INVALID_JOB_ORDER_STATUS,
    /// An acceptance check failed, or Store of an id that already exists.
    UnableToAcceptJobOrder = bits::UNABLE_TO_ACCEPT_JOB_ORDER,
    /// Malformed request: no job order, no job order id, no subject, or an
    /// empty state list.
    InvalidRequest = bits::INVALID_REQUEST,
}

impl ReturnStatus {
    /// The wire value.
    pub fn value(self) -> u64 {
        self as u64
    }

    /// The status with that wire value.
    pub fn from_value(v: u64) -> Option<ReturnStatus> {
        [
            ReturnStatus::NoError,
            ReturnStatus::UnknownJobOrderId,
            ReturnStatus::InvalidJobOrderStatus,
            ReturnStatus::UnableToAcceptJobOrder,
            ReturnStatus::InvalidRequest,
        ]
        .into_iter()
        .find(|s| s.value() == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_contracts() {
        assert_eq!(ReturnStatus::NoError.value(), 1);
        assert_eq!(ReturnStatus::UnknownJobOrderId.value(), 2);
        assert_eq!(ReturnStatus::InvalidJobOrderStatus.value(), 8);
        assert_eq!(ReturnStatus::UnableToAcceptJobOrder.value(), 16);
        assert_eq!(ReturnStatus::InvalidRequest.value(), 4294967296);
        assert_eq!(
            ReturnStatus::from_value(16),
            Some(ReturnStatus::UnableToAcceptJobOrder)
        );
        assert_eq!(ReturnStatus::from_value(3), None);
    }
}
