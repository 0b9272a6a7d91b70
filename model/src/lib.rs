//! Gannet's shared vocabulary: the types that the gateway, the control API and
//! the CLI all speak. Plain data with serde, no I/O.
//!
//! Gateway and control API are upgraded separately, so wire types tolerate
//! unknown fields; strictness about typos belongs to whoever reads a file
//! written by a person (the gateway's routes file, for example).
#![deny(missing_docs)]

pub mod api;
mod digest;
mod id;
mod limits;
mod size;
pub mod snapshot;

pub use digest::{DigestError, Sha256Digest};
pub use id::{AppId, IdError};
pub use limits::{Limits, ResolvedLimits};
pub use size::{ByteSize, SizeError};
