//! The linker: which interfaces a guest may import.
//!
//! Deny by default is enforced by what the host *grants*, not by refusing to
//! link. Mainstream toolchains import far more than the `wasi:http/proxy`
//! world (Rust std imports wasi:cli, componentize-js wasi:filesystem,
//! componentize-py every wasi:sockets interface), so all of these link — but
//! [`crate::host::new_store`] gives them nothing: no preopened directory, no
//! socket, no name lookup, empty stdin, only the app's env.

use crate::RuntimeError;
use crate::host::Host;
use wasmtime::Engine;
use wasmtime::component::Linker;

/// The WASI 0.2 packages a component may import (any 0.2.x version). Any
/// other import is refused when the component is linked.
pub const GRANTED_PACKAGES: &[&str] = &[
    "wasi:http",
    "wasi:cli",
    "wasi:io",
    "wasi:clocks",
    "wasi:random",
    "wasi:filesystem",
    "wasi:sockets",
];

/// Builds the linker with every granted interface.
pub fn build_linker(engine: &Engine) -> Result<Linker<Host>, RuntimeError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| RuntimeError::Engine(format!("linking wasi:http: {e:#}")))?;
    Ok(linker)
}
