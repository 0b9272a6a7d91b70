//! Command-line types only (clap). Resolved into settings in `settings.rs`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Gannet: deploy WebAssembly apps to the edge.
#[derive(Parser, Debug)]
#[command(name = "gannet", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Control API URL (overrides the stored login).
    #[arg(long, global = true, env = "GANNET_ENDPOINT")]
    pub endpoint: Option<String>,
    /// API token (overrides the stored login).
    #[arg(long, global = true, env = "GANNET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA certificate(s) to trust for the control API's
    /// HTTPS, besides the built-in public roots (`gannet login` stores it).
    #[arg(long, global = true, env = "GANNET_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store an endpoint and token for later commands (checked first).
    Login {
        /// Control API URL, e.g. https://api.example.com (plain http://
        /// only to a loopback address, e.g. http://127.0.0.1:7070)
        #[arg(long)]
        endpoint: String,
        /// Token from your operator (or `gannet admin tenants create`).
        #[arg(long)]
        token: String,
    },
    /// Show who the current token belongs to, its quotas and usage.
    Whoami,
    /// Create and list apps, choose where they are served.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Upload a component and make it a new version of an app.
    Deploy(DeployArgs),
    /// List an app's versions.
    Versions {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Make an earlier version live again, at once everywhere (ends a
    /// live rollout).
    Rollback {
        /// The app.
        #[arg(long)]
        app: String,
        /// Version number (default: the one before the live one).
        #[arg(long)]
        to: Option<u32>,
    },
    /// Follow and steer an app's progressive (canary) rollout.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Set, list and delete an app's secrets (their values are never
    /// shown); gateways get changes within the sync time, no redeploy.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Set, list and delete an app's plain config values; gateways get
    /// changes within the sync time, no redeploy.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Attach hostnames to an app.
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Manage your API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Show the audit log of your tenant's actions.
    Audit,
    /// Show which version of an app is live at which PoP, with traffic.
    Status {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Run the whole platform locally: control API, one gateway, a tenant.
    Dev(DevArgs),
    /// Operator commands.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// Its name (a-z, 0-9, '-').
        name: String,
        /// Serve it only at the PoPs whose labels match this selector, e.g.
        /// `region=eu,tier!=canary`, `gpu`, `!gpu`
        /// (default: every PoP).
        #[arg(long, value_name = "SELECTOR")]
        place: Option<String>,
        /// What keeps a user on one version during a rollout: `client` (the
        /// client's address, the default), `header:NAME` or `cookie:NAME`.
        #[arg(long, value_name = "client|header:NAME|cookie:NAME")]
        affinity: Option<String>,
    },
    /// List your apps.
    List,
    /// Show one app.
    Show {
        /// The app.
        name: String,
    },
    /// Choose the PoPs an app is served at (refused while a rollout is
    /// live).
    Place {
        /// The app.
        app: String,
        /// A selector over PoP labels, e.g. `region=eu`; `""` for every PoP.
        selector: String,
    },
    /// Choose what keeps a user on one version during a rollout.
    Affinity {
        /// The app.
        app: String,
        /// `client` (the client's address), `header:NAME` or `cookie:NAME`.
        #[arg(value_name = "client|header:NAME|cookie:NAME")]
        value: String,
    },
    /// Set the app's own rollout policy: what `deploy --strategy canary`
    /// uses when it names no --steps or --bake (else the platform's).
    Policy {
        /// The app.
        app: String,
        /// Steps, e.g. "pops=tier:canary 100%; 10%; 50%; 100%".
        #[arg(long)]
        steps: Option<String>,
        /// Each step's bake time: `60s`, `5m`, or seconds.
        #[arg(long)]
        bake: Option<String>,
        /// Go back to the platform's policy.
        #[arg(long, conflicts_with_all = ["steps", "bake"])]
        reset: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show the app's newest rollout: phase, steps, PoPs, canary and stable
    /// figures, transitions.
    Status {
        /// The app.
        #[arg(long)]
        app: String,
        /// Redraw every second until the rollout ends (exit 1 if it was
        /// aborted); with --json, one JSON line per change.
        #[arg(long)]
        watch: bool,
    },
    /// Move the rollout to its next step now, without its gates (or finish
    /// it from the last step).
    Promote {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Hold the rollout at its step (the canary keeps its weights).
    Pause {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Restart a paused rollout's step.
    Resume {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Roll the canary back: it serves nowhere.
    Abort {
        /// The app.
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set a secret (created or replaced). Its value is read from stdin
    /// when stdin is not a terminal (one trailing newline dropped), else
    /// asked for without echo; never from the command line.
    Set {
        /// The secret's name.
        name: String,
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// List the app's secrets: names and when each was set, never values.
    List {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Delete a secret.
    Delete {
        /// The secret's name.
        name: String,
        /// The app.
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set config values (each created or replaced, in the order given).
    Set {
        /// The app.
        #[arg(long)]
        app: String,
        /// The values, each KEY=VALUE (VALUE may be empty or hold `=`).
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
    /// List the app's config values.
    List {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Delete a config value.
    Delete {
        /// The key.
        key: String,
        /// The app.
        #[arg(long)]
        app: String,
    },
}

/// How a deploy reaches the PoPs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Every PoP serves the new version at once.
    Immediate,
    /// The new version is a canary, given more traffic step by step while
    /// its health gates pass, and rolled back when one fails.
    Canary,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The component (.wasm) to upload.
    pub file: PathBuf,
    /// The app to deploy to.
    #[arg(long)]
    pub app: String,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit, e.g. 64MiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU time limit per request, ms.
    #[arg(long)]
    pub cpu_ms: Option<u64>,
    /// Wall-clock limit per request, ms.
    #[arg(long)]
    pub wall_ms: Option<u64>,
    /// Instances running at once per gateway.
    #[arg(long)]
    pub max_inflight: Option<u32>,
    /// A host the app may call (repeatable).
    #[arg(long)]
    pub outbound: Vec<String>,
    /// Upload without making it the live version.
    #[arg(long)]
    pub no_activate: bool,
    /// How it reaches the PoPs: at once, or as a canary rolled out in steps.
    #[arg(long, value_enum, default_value = "immediate")]
    pub strategy: Strategy,
    /// The canary's steps, `;`-separated, each `[pops=SELECTOR] N%`, the
    /// last `100%`, e.g. "pops=tier=canary 100%; 10%; 50%; 100%" (default:
    /// the platform's, 10%; 50%; 100%). With --strategy canary.
    #[arg(long)]
    pub steps: Option<String>,
    /// How long each step bakes before it may advance: `60s`, `2m`, or
    /// seconds. With --strategy canary.
    #[arg(long)]
    pub bake: Option<String>,
    /// With --strategy canary: wait until the rollout ends, printing its
    /// transitions; fail unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait (0: do not wait): for every gateway to serve an
    /// immediate deploy (default 60); for a canary's rollout to start
    /// (default 60), or with --wait to end (default 1800).
    #[arg(long)]
    pub wait_secs: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// A component to deploy (app named after the file) and redeploy on change.
    pub component: Option<PathBuf>,
    /// Where the platform keeps its state.
    #[arg(long, default_value = "./.gannet")]
    pub state_dir: PathBuf,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: std::net::SocketAddr,
    /// The control API's address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: std::net::SocketAddr,
    /// The gateway's admin address (metrics, probes).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: std::net::SocketAddr,
}

#[derive(Subcommand, Debug)]
pub enum DomainsCommand {
    /// Add a hostname to an app: with its own certificate if given, else
    /// with a certificate the platform obtains and renews over ACME
    /// (`--managed`, the default when the platform has an ACME CA). For a
    /// hostname the app already has, replace how its certificate is
    /// provided.
    Add {
        /// The hostname.
        hostname: String,
        /// The app.
        #[arg(long)]
        app: String,
        /// PEM certificate chain for the hostname, leaf first.
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// PEM private key of --cert (sent to the control API, stored
        /// encrypted, never shown again).
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Have the platform obtain and renew the certificate (ACME
        /// HTTP-01): the hostname serves only its challenge until the
        /// first one is issued; `gannet domains list` shows where it stands.
        #[arg(long, conflicts_with = "cert")]
        managed: bool,
    },
    /// List your custom hostnames and their certificates.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
    },
    /// Check now that you control a hostname (a TXT record or the
    /// hostname pointed at the platform; `domains list` shows the token).
    Verify {
        /// The hostname.
        hostname: String,
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Remove a hostname.
    Remove {
        /// The hostname.
        hostname: String,
        /// The app.
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// List your tokens.
    List,
    /// Create a new token (shown once).
    Create,
    /// Revoke a token by id.
    Revoke {
        /// Token id (from `gannet tokens list`).
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Manage points of presence.
    #[command(subcommand)]
    Pops(PopsCommand),
    /// Manage gateways.
    #[command(subcommand)]
    Gateways(GatewaysCommand),
    /// Managed certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Every tenant's custom hostnames and their proofs of control.
    #[command(subcommand)]
    Domains(AdminDomainsCommand),
}

#[derive(Subcommand, Debug)]
pub enum AdminDomainsCommand {
    /// List custom hostnames with how their control was proved.
    List {
        /// Only those claimed before proofs were required (to re-verify).
        #[arg(long, conflicts_with = "unverified")]
        legacy: bool,
        /// Only those waiting for a proof.
        #[arg(long)]
        unverified: bool,
    },
    /// Vouch for a tenant's control of a hostname (checked out of band):
    /// it serves at once.
    Verify {
        /// The hostname.
        hostname: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Obtain a new managed certificate for a hostname now (the current
    /// one is served until it is issued).
    Renew {
        /// The hostname.
        hostname: String,
    },
    /// Set the platform certificate (`*.<platform domain>`): every gateway
    /// serves it within the sync time, in place of its --tls-cert file.
    Set {
        /// The platform certificate (the only kind set here).
        #[arg(long, required = true)]
        platform: bool,
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: std::path::PathBuf,
        /// PEM private key (stored encrypted, never shown again).
        #[arg(long)]
        key: std::path::PathBuf,
    },
    /// Show what the platform certificate says.
    Show {
        /// The platform certificate.
        #[arg(long, required = true)]
        platform: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PopsCommand {
    /// Register a PoP.
    Create {
        /// Its name (a-z, 0-9, '-').
        name: String,
        /// Its region.
        #[arg(long, default_value = "")]
        region: String,
        /// Labels k=v,k=v.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
    },
    /// List PoPs.
    List,
}

#[derive(Subcommand, Debug)]
pub enum GatewaysCommand {
    /// Issue a node token for a new gateway of a PoP (printed once).
    Token {
        /// The PoP.
        #[arg(long)]
        pop: String,
    },
    /// List gateways: PoP, Gannet version, architecture, revision applied
    /// and lag, last contact (SILENT when not heard from for 90 s), apps
    /// refused and why. `--json` prints the whole listing.
    List,
    /// Revoke a gateway's node token.
    Revoke {
        /// Gateway id.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant and its first token.
    Create {
        /// Its name (a-z, 0-9, '-').
        name: String,
        /// Apps it may have.
        #[arg(long)]
        max_apps: Option<u32>,
        /// Largest component, e.g. 20MiB.
        #[arg(long)]
        max_component_size: Option<String>,
        /// Total stored components, e.g. 1GiB.
        #[arg(long)]
        max_total_bytes: Option<String>,
        /// Versions kept per app.
        #[arg(long)]
        max_versions: Option<u32>,
        /// Ceiling for apps' memory limit.
        #[arg(long)]
        max_memory: Option<String>,
        /// Ceiling for apps' CPU limit, ms.
        #[arg(long)]
        max_cpu_ms: Option<u64>,
        /// Ceiling for apps' wall-clock limit, ms.
        #[arg(long)]
        max_wall_ms: Option<u64>,
        /// API tokens it may hold at once.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Ceiling for apps' max_inflight limit.
        #[arg(long)]
        max_inflight: Option<u32>,
    },
    /// List tenants.
    List,
    /// Issue another token for a tenant.
    Token {
        /// The tenant.
        name: String,
    },
}
