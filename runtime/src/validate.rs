//! Validating an upload: is it a component the platform can run?
//!
//! In order, each failure with its own error: is it wasm at all → is it a
//! component (not a core module) → does it parse → does it export
//! `wasi:http/incoming-handler@0.2.x` → does it import only interfaces the
//! platform grants ([`crate::linker::GRANTED_PACKAGES`]; every refused import
//! is named) → do its core modules fit the admission limits (read from the
//! binary, [`crate::admission::check_static`]) → does it compile with the
//! platform's engine, whose pool checks the per-component aggregates → does
//! it link and pre-instantiate against the platform's linker.

use crate::admission::{self, AdmissionError, AdmissionLimits};
use crate::host::Host;
use wasmparser::{Encoding, Parser, Payload};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The export every app must have.
pub const HANDLER_INTERFACE: &str = "wasi:http/incoming-handler";

/// Why an upload is not a runnable component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// Not WebAssembly (no `\0asm` header).
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The binary does not parse (truncated, corrupt).
    #[error("malformed component: {0}")]
    Malformed(String),
    /// No `wasi:http/incoming-handler@0.2.x` export.
    #[error("the component does not export {HANDLER_INTERFACE}@0.2.x (exports: {0})")]
    MissingHandler(String),
    /// Imports the platform does not provide.
    #[error("the component imports interfaces the platform does not provide: {}", .0.join(", "))]
    RefusedImports(Vec<String>),
    /// Does not fit what every gateway admits.
    #[error("the component exceeds the platform's admission limits: {0}")]
    Admission(String),
    /// Does not compile with the platform's engine.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// Compiles but does not link against the platform's linker.
    #[error("the component cannot be instantiated by the platform: {0}")]
    Link(String),
}

/// What validation learned about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// Top-level import names.
    pub imports: Vec<String>,
    /// Top-level export names.
    pub exports: Vec<String>,
}

/// Whether `name` (e.g. `wasi:cli/environment@0.2.9`) is a granted import.
pub fn is_granted(name: &str) -> bool {
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let Some((package, _interface)) = path.split_once('/') else {
        return false;
    };
    crate::linker::GRANTED_PACKAGES.contains(&package)
        && version.is_none_or(|v| v.starts_with("0.2."))
}

/// Reads the top-level imports and exports without compiling. Checks the
/// header, the encoding, and that the whole binary parses.
pub fn inspect(bytes: &[u8]) -> Result<ComponentInfo, ValidationError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ValidationError::NotWasm);
    }
    let mut info = ComponentInfo {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    let mut depth = 0usize;
    let mut saw_end = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ValidationError::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(ValidationError::CoreModule);
                }
                depth += 1;
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ValidationError::Malformed(e.to_string()))?;
                    info.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| ValidationError::Malformed(e.to_string()))?;
                    info.exports.push(export.name.name.to_string());
                }
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    saw_end = true;
                }
            }
            _ => {}
        }
    }
    if !saw_end {
        return Err(ValidationError::Malformed("unexpected end of file".into()));
    }
    Ok(info)
}

/// Checks an inspected component's exports and imports.
pub fn check_interface(info: &ComponentInfo) -> Result<(), ValidationError> {
    let exports_handler = info.exports.iter().any(|e| {
        e.strip_prefix(HANDLER_INTERFACE)
            .and_then(|rest| rest.strip_prefix("@0.2."))
            .is_some()
    });
    if !exports_handler {
        let exports = if info.exports.is_empty() {
            "none".to_string()
        } else {
            info.exports.join(", ")
        };
        return Err(ValidationError::MissingHandler(exports));
    }
    let refused: Vec<String> = info
        .imports
        .iter()
        .filter(|i| !is_granted(i))
        .cloned()
        .collect();
    if !refused.is_empty() {
        return Err(ValidationError::RefusedImports(refused));
    }
    Ok(())
}

impl From<AdmissionError> for ValidationError {
    fn from(e: AdmissionError) -> Self {
        ValidationError::Admission(e.to_string())
    }
}

/// Full validation: inspect, check, check `limits` statically, compile with
/// `engine` (whose pool, if it has one, checks the aggregates), link with
/// `linker`. Blocking (compiles): call it off the async executor.
pub fn validate(
    engine: &Engine,
    linker: &Linker<Host>,
    limits: &AdmissionLimits,
    bytes: &[u8],
) -> Result<ComponentInfo, ValidationError> {
    let info = inspect(bytes)?;
    check_interface(&info)?;
    admission::check_static(bytes, limits)?;
    let component = Component::new(engine, bytes).map_err(|e| {
        let text = format!("{e:#}");
        // The pool's own checks: per-component aggregates and record sizes.
        if text.contains("pooling allocator") {
            ValidationError::Admission(text)
        } else {
            ValidationError::Compile(text)
        }
    })?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| ValidationError::Link(format!("{e:#}")))?;
    ProxyPre::new(pre).map_err(|e| ValidationError::Link(format!("{e:#}")))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_imports() {
        assert!(is_granted("wasi:cli/environment@0.2.9"));
        assert!(is_granted("wasi:http/types@0.2.12"));
        assert!(is_granted("wasi:sockets/tcp@0.2.0"));
        assert!(!is_granted("wasi:http/types@0.3.0"));
        assert!(!is_granted("fermyon:spin/key-value@2.0.0"));
        assert!(!is_granted("fastly:api/http-req"));
        assert!(!is_granted("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!is_granted("env"));
    }

    #[test]
    fn header_checks() {
        assert_eq!(
            inspect(b"hello world, not wasm"),
            Err(ValidationError::NotWasm)
        );
        assert_eq!(
            inspect(b"\0asm\x01\0\0\0"),
            Err(ValidationError::CoreModule)
        );
        let empty_component = b"\0asm\x0d\0\x01\0";
        let info = inspect(empty_component).unwrap();
        assert!(info.exports.is_empty());
        assert!(matches!(
            check_interface(&info),
            Err(ValidationError::MissingHandler(_))
        ));
        assert!(matches!(
            inspect(&[b"\0asm\x0d\0\x01\0".as_slice(), &[0x0b, 0x05, 0x01]].concat()),
            Err(ValidationError::Malformed(_))
        ));
    }
}
