//! End-to-end tests of `gannet-gateway`: the real binary, real example
//! components, real sockets. One test binary for the crate.

mod harness;

mod cache;
mod guests;
mod lifecycle;
mod limits;
mod routing;
