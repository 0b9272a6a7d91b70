//! The routes file: hostnames → app id, component, env, limits.
//!
//! ```toml
//! [[app]]
//! id = "hello"                      # unique; shows in logs and metric labels
//! hosts = ["hello.localhost", "*.hello.test"]
//! component = "examples/hello.wasm" # relative to this file
//! env = { GREETING = "hi" }
//! outbound = ["api.example.com", "https://pay.example.com:8443"]  # default none
//! affinity = "header:x-user"        # what splits requests with a canary:
//!                                   # client (default), header:<n>, cookie:<n>
//! [app.limits]                      # every key optional; platform defaults apply
//! memory = "64MiB"
//! cpu_ms = 50
//! [app.canary]                      # optional: a second version with a share
//! component = "examples/hello-v2.wasm"
//! weight = 10                       # percent of requests, by the app's affinity
//! env = { GREETING = "hi v2" }       # env, limits, outbound: as for the app
//! ```
//!
//! Reading is strict: an unknown key, a duplicate id or hostname, a missing
//! component file or an out-of-range limit rejects the whole file with a
//! message that names the problem.

use gannet_model::snapshot::{Affinity, HostCertificate};
use gannet_model::{AppId, Limits, Sha256Digest};
use gannet_scheduler::split::Weight;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A routes file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("reading routes file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("routes file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its location.
        message: String,
    },
    /// The file is well-formed but says something impossible.
    #[error("routes file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default, rename = "app")]
    apps: Vec<RawApp>,
}

#[derive(Deserialize)]
struct RawApp {
    id: AppId,
    #[serde(default)]
    tenant: Option<String>,
    hosts: Vec<String>,
    component: PathBuf,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    outbound: Vec<String>,
    #[serde(default)]
    canary: Option<RawCanary>,
    #[serde(default)]
    affinity: Option<String>,
}

#[derive(Deserialize)]
struct RawCanary {
    component: PathBuf,
    weight: u8,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    outbound: Vec<String>,
}

/// A canary version served beside an app's stable one, with its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanarySpec {
    /// Its component.
    pub component: PathBuf,
    /// The component's digest, once known (the control API gives it; a
    /// routes file's is hashed when it is loaded).
    pub digest: Option<Sha256Digest>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Limits as written.
    pub limits: Limits,
    /// Outbound host allowlist.
    pub outbound: Vec<String>,
    /// Its version number (apps from the control API).
    pub version: Option<u32>,
    /// Its share of requests.
    pub weight: Weight,
}

/// One app as the routes file declares it, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSpec {
    /// The app's id.
    pub id: AppId,
    /// The tenant it belongs to (for log labels); `local` when not given.
    pub tenant: String,
    /// Hostnames, lowercase: exact names and `*.suffix` wildcards.
    pub hosts: Vec<String>,
    /// Absolute or routes-file-relative path, resolved.
    pub component: PathBuf,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Limits as written (defaults not yet applied).
    pub limits: Limits,
    /// Outbound host allowlist.
    pub outbound: Vec<String>,
    /// For apps from the control API: `tenant/app` and the version number,
    /// reported back with request counts.
    pub report: Option<(String, u32)>,
    /// The tenant's own certificates for some of `hosts`, served by SNI
    /// (apps from the control API; a routes file has none).
    pub certificates: Vec<HostCertificate>,
    /// A canary version served beside this one.
    pub canary: Option<CanarySpec>,
    /// What the split between the two hashes.
    pub affinity: Affinity,
}

impl AppSpec {
    /// The canary as a spec of its own (same id and tenant, no hostnames),
    /// with its digest; `None` without a canary or before its digest is
    /// known.
    pub fn canary_as_spec(&self) -> Option<(AppSpec, Sha256Digest)> {
        let c = self.canary.as_ref()?;
        let digest = c.digest?;
        let report = match (&self.report, c.version) {
            (Some((key, _)), Some(version)) => Some((key.clone(), version)),
            _ => None,
        };
        Some((
            AppSpec {
                id: self.id.clone(),
                tenant: self.tenant.clone(),
                hosts: Vec::new(),
                component: c.component.clone(),
                env: c.env.clone(),
                limits: c.limits.clone(),
                outbound: c.outbound.clone(),
                report,
                certificates: Vec::new(),
                canary: None,
                affinity: Affinity::Client,
            },
            digest,
        ))
    }
}

/// Bounds a routes file may not exceed.
#[derive(Clone, Copy, Debug)]
pub struct LimitBounds {
    /// Largest `memory` an app may ask for (the pool's memory slot size).
    pub max_memory: u64,
}

/// Reads and validates the routes file at `path`.
pub fn load(path: &Path, bounds: LimitBounds) -> Result<Vec<AppSpec>, RoutesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, bounds).map_err(|e| match e {
        ParseError::Parse(message) => RoutesError::Parse {
            path: path.to_path_buf(),
            message,
        },
        ParseError::Invalid(message) => RoutesError::Invalid {
            path: path.to_path_buf(),
            message,
        },
    })
}

enum ParseError {
    Parse(String),
    Invalid(String),
}

fn parse(text: &str, base: &Path, bounds: LimitBounds) -> Result<Vec<AppSpec>, ParseError> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(text).map_err(|e| ParseError::Parse(e.to_string()))?;
    let raw: RawFile = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
        .map_err(|e| ParseError::Parse(e.to_string()))?;
    if !unknown.is_empty() {
        return Err(ParseError::Invalid(format!(
            "unknown key{} {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        )));
    }
    let invalid = ParseError::Invalid;
    let mut ids = HashMap::new();
    let mut hosts: HashMap<String, AppId> = HashMap::new();
    let mut specs = Vec::with_capacity(raw.apps.len());
    for app in raw.apps {
        if ids.insert(app.id.clone(), ()).is_some() {
            return Err(invalid(format!("app id `{}` appears twice", app.id)));
        }
        if app.hosts.is_empty() {
            return Err(invalid(format!("app `{}` has no hosts", app.id)));
        }
        let mut app_hosts = Vec::with_capacity(app.hosts.len());
        for h in &app.hosts {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if !valid_host_pattern(&h) {
                return Err(invalid(format!(
                    "app `{}`: `{h}` is not a hostname or `*.domain` wildcard",
                    app.id
                )));
            }
            if let Some(other) = hosts.insert(h.clone(), app.id.clone()) {
                return Err(invalid(format!(
                    "host `{h}` is claimed by both `{other}` and `{}`",
                    app.id
                )));
            }
            app_hosts.push(h);
        }
        if let Some(key) = bad_env_key(&app.env) {
            return Err(invalid(format!(
                "app `{}`: env key `{key}` is not valid",
                app.id
            )));
        }
        check_limits(&app.id, &app.limits, bounds).map_err(invalid)?;
        gannet_runtime::outbound::validate_entries(&app.outbound)
            .map_err(|e| invalid(format!("app `{}`: {e}", app.id)))?;
        let component = base.join(&app.component);
        if !component.is_file() {
            return Err(invalid(format!(
                "app `{}`: component {} does not exist",
                app.id,
                component.display()
            )));
        }
        let canary = match app.canary {
            None => None,
            Some(c) => {
                let weight = Weight::new(c.weight)
                    .map_err(|e| invalid(format!("app `{}`: canary: {e}", app.id)))?;
                if let Some(key) = bad_env_key(&c.env) {
                    return Err(invalid(format!(
                        "app `{}`: canary env key `{key}` is not valid",
                        app.id
                    )));
                }
                check_limits(&app.id, &c.limits, bounds).map_err(invalid)?;
                gannet_runtime::outbound::validate_entries(&c.outbound)
                    .map_err(|e| invalid(format!("app `{}`: canary: {e}", app.id)))?;
                let component = base.join(&c.component);
                if !component.is_file() {
                    return Err(invalid(format!(
                        "app `{}`: canary component {} does not exist",
                        app.id,
                        component.display()
                    )));
                }
                Some(CanarySpec {
                    component,
                    digest: None,
                    env: c.env,
                    limits: c.limits,
                    outbound: c.outbound,
                    version: None,
                    weight,
                })
            }
        };
        let affinity = match &app.affinity {
            None => Affinity::Client,
            Some(a) => Affinity::parse(a).map_err(|e| invalid(format!("app `{}`: {e}", app.id)))?,
        };
        specs.push(AppSpec {
            canary,
            affinity,
            tenant: app.tenant.unwrap_or_else(|| "local".to_string()),
            id: app.id,
            hosts: app_hosts,
            component,
            env: app.env,
            limits: app.limits,
            outbound: app.outbound,
            report: None,
            certificates: Vec::new(),
        });
    }
    Ok(specs)
}

/// The first key of `env` an environment cannot hold (empty, or with `=`
/// or NUL), if any.
fn bad_env_key(env: &BTreeMap<String, String>) -> Option<&String> {
    env.keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
}

fn check_limits(id: &AppId, l: &Limits, bounds: LimitBounds) -> Result<(), String> {
    if let Some(m) = l.memory
        && (m.bytes() < (1 << 20) || m.bytes() > bounds.max_memory)
    {
        return Err(format!(
            "app `{id}`: memory {m} is outside 1MiB..={}",
            gannet_model::ByteSize(bounds.max_memory)
        ));
    }
    for (name, v) in [("cpu_ms", l.cpu_ms), ("wall_ms", l.wall_ms)] {
        if v == Some(0) {
            return Err(format!("app `{id}`: {name} must be at least 1"));
        }
    }
    if l.max_inflight == Some(0) {
        return Err(format!("app `{id}`: max_inflight must be at least 1"));
    }
    Ok(())
}

/// `name.example` or `*.example`: DNS labels of `a-z0-9-`.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: LimitBounds = LimitBounds {
        max_memory: 4 << 30,
    };

    fn parse_in(dir: &Path, text: &str) -> Result<Vec<AppSpec>, String> {
        parse(text, dir, BOUNDS).map_err(|e| match e {
            ParseError::Parse(m) | ParseError::Invalid(m) => m,
        })
    }

    fn dir_with_component() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.wasm"), b"x").unwrap();
        d
    }

    #[test]
    fn reads_the_documented_example() {
        let d = dir_with_component();
        let specs = parse_in(
            d.path(),
            r#"
[[app]]
id = "hello"
hosts = ["Hello.localhost", "*.hello.test"]
component = "a.wasm"
env = { GREETING = "hi" }
[app.limits]
memory = "64MiB"
cpu_ms = 50
wall_ms = 30000
max_inflight = 100
max_request_body = "10MiB"
"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].hosts, ["hello.localhost", "*.hello.test"]);
        assert_eq!(
            specs[0].limits.memory,
            Some(gannet_model::ByteSize::mib(64))
        );
        assert_eq!(specs[0].env["GREETING"], "hi");
        assert_eq!(specs[0].component, d.path().join("a.wasm"));
    }

    #[test]
    fn rejects_mistakes_with_clear_messages() {
        let d = dir_with_component();
        let cases = [
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\n[app.limits]\nmemroy = \"1MiB\"",
                "unknown key app.0.limits.memroy",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"missing.wasm\"",
                "does not exist",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\n[[app]]\nid = \"a\"\nhosts = [\"b.test\"]\ncomponent = \"a.wasm\"",
                "appears twice",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"x.test\"]\ncomponent = \"a.wasm\"\n[[app]]\nid = \"b\"\nhosts = [\"x.test\"]\ncomponent = \"a.wasm\"",
                "claimed by both",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"bad host\"]\ncomponent = \"a.wasm\"",
                "not a hostname",
            ),
            (
                "[[app]]\nid = \"A_B\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"",
                "not a valid id",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\n[app.limits]\nmemory = \"8GiB\"",
                "outside",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\n[app.limits]\ncpu_ms = 0",
                "at least 1",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = []\ncomponent = \"a.wasm\"",
                "no hosts",
            ),
            (
                "[[app]]\nid = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\noutbound = [\"ftp://x.test\"]",
                "outbound entry `ftp://x.test`",
            ),
            ("[[app]\nid = ", "expected"),
        ];
        for (text, want) in cases {
            let err = parse_in(d.path(), text).expect_err(text);
            assert!(
                err.contains(want),
                "error for {text:?} was {err:?}, wanted {want:?}"
            );
        }
    }
}
