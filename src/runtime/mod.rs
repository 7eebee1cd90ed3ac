//! What every long-running part of a station shares, below the application
//! layer: graceful [`Shutdown`], backoff between attempts, and the one
//! [`clock`] (Redis's) for decisions that span replicas.

pub(crate) mod backoff;
pub(crate) mod clock;
mod shutdown;

pub use shutdown::{Shutdown, ShutdownHandle};
