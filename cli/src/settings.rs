//! Where the CLI's login lives: `<config dir>/gannet/config.toml`, written
//! with mode 0600. GANNET_ENDPOINT / GANNET_TOKEN / GANNET_CA_CERT (or the
//! flags) override it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The stored login.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Login {
    /// Control API URL.
    pub endpoint: Option<String>,
    /// API token.
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for the control API's HTTPS
    /// (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// The config file's path.
pub fn config_path() -> Result<PathBuf> {
    let dir = dirs::config_dir().context("no config directory (set HOME or XDG_CONFIG_HOME)")?;
    Ok(dir.join("gannet").join("config.toml"))
}

/// Reads the stored login (empty if none).
pub fn load() -> Result<Login> {
    let path = config_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Login::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the login, readable only by the user.
pub fn save(login: &Login) -> Result<PathBuf> {
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(login)?;
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Endpoint, token and CA after flags, env and the stored login.
pub struct Resolved {
    /// Control API URL.
    pub endpoint: String,
    /// API token.
    pub token: String,
    /// CA certificates to trust besides the public roots.
    pub ca_cert: Option<PathBuf>,
}

/// `path` made absolute, so a stored login works from any directory; it
/// must exist.
pub fn absolute_ca_cert(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path)
        .with_context(|| format!("reading the CA certificates in {}", path.display()))
}

/// Resolves endpoint, token and CA, or says how to provide them.
pub fn resolve(
    endpoint: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
) -> Result<Resolved> {
    let stored = load()?;
    let ca_cert = ca_cert.or(stored.ca_cert);
    let endpoint = endpoint.or(stored.endpoint).context(
        "no control API endpoint: run `gannet login --endpoint URL --token TOKEN` or set GANNET_ENDPOINT",
    )?;
    let token = token
        .or(stored.token)
        .context("no token: run `gannet login --endpoint URL --token TOKEN` or set GANNET_TOKEN")?;
    Ok(Resolved {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        token,
        ca_cert,
    })
}
