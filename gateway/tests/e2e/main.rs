//! End-to-end tests of `gannet-gateway`: the real binary, real example
//! components, real sockets. One test binary for the crate.

mod certs;
mod control;
mod harness;
mod pebble;

mod acme;
mod browser;
mod cache;
mod domains;
mod fair;
mod guests;
mod hostile;
mod lifecycle;
mod limits;
mod outbound;
mod ownership;
mod platform_tls;
mod rollout;
mod routing;
mod settings;
mod tls;
