//! Fault injection and the delivery checker: `tim chaos` (the `tim-chaos` binary) runs nodes
//! and Redis as child processes, drives users through the resilient client while killing and
//! restarting them, and checks with the [`Ledger`] that every acked message reached its
//! recipient exactly once and in order.
mod ledger;
mod run;

pub use ledger::{Ledger, Report};
pub use run::{ChaosError, ChaosOptions, record, run};
