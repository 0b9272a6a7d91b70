//! Gannet's scheduler: where each app runs, how a new version reaches the
//! PoPs, and when a rollout is rolled back.
//!
//! - [`selector`] and [`placement`]: an app is served at the PoPs whose
//!   labels match its selector (`region=eu,tier!=canary`), and nowhere else.
//! - [`split`]: the sticky split of an app's traffic between its stable and
//!   canary versions, and the `gannet-version` override header.
//! - [`analysis`]: the health gates that compare a canary with the stable
//!   version over the same window.
//! - [`rollout`]: the rollout state machine, step by step, with its
//!   automatic rollback.
//!
//! The crate is pure and deterministic: no I/O, no threads, no clock. It is
//! driven by the inputs it is given (PoP labels, gateway reports, ACKs and
//! NACKs, operator actions) and by the time, in milliseconds, that the caller
//! passes in; the same inputs always give the same decisions. The control API
//! runs it and stores and publishes what it decides; the gateway uses
//! [`split`] on its hot path.
#![deny(missing_docs)]

pub mod analysis;
pub mod placement;
pub mod rollout;
pub mod selector;
pub mod split;
