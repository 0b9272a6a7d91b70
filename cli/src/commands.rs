//! One function per command. Each prints data to stdout and returns.

// Table headers are padded with the same widths as their rows.
#![allow(clippy::print_literal)]

use crate::args::{
    AdminCommand, AdminDomainsCommand, AppsCommand, CertsCommand, Cli, Command, DeployArgs,
    DomainsCommand, GatewaysCommand, PopsCommand, Strategy, TenantsCommand, TokensCommand,
};
use crate::client::Client;
use crate::rollout;
use crate::settings;
use crate::settings_cmd;
use anyhow::{Context, Result};
use futures::StreamExt;
use gannet_model::ByteSize;
use gannet_model::api::{
    AddDomain, App, AuditEntry, CertificateSummary, CertificateUpload, CreateApp, CreateTenant,
    Domain, QuotaPatch, Rollback, RolloutPolicy, SetAffinity, SetPlacement, Tenant, TenantCreated,
    TokenCreated, TokenInfo, Version, WhoAmI,
};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::Serialize;

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Reads a PEM file to send, saying which one could not be read.
fn read_pem(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} from {}", path.display()))
}

/// The domains as a table: hostname, app, certificate issuer and expiry.
fn print_domains(domains: &[Domain]) {
    println!(
        "{:<32} {:<16} {:<8} {:<26} {:<32} ISSUER",
        "HOSTNAME", "APP", "CERT", "EXPIRES", "NAMES"
    );
    let now = unix_now();
    for d in domains {
        let (kind, expires, names, issuer) = match &d.certificate {
            Some(c) => (
                c.kind.as_str(),
                expiry(c.not_after, now),
                c.names.join(","),
                c.issuer.as_str(),
            ),
            None if d.managed.is_some() => ("managed", "-".to_string(), "-".to_string(), "-"),
            None => ("platform", "-".to_string(), "-".to_string(), "-"),
        };
        println!(
            "{:<32} {:<16} {:<8} {:<26} {:<32} {}",
            d.hostname, d.app, kind, expires, names, issuer
        );
        if let Some(o) = &d.ownership
            && !o.verified
        {
            match &o.error {
                Some(error) => {
                    println!("  not serving until control is proved; last check: {error}")
                }
                None => println!("  not serving until control is proved"),
            }
        }
        if let Some(m) = &d.managed {
            match &m.error {
                Some(error) if m.state == "failed" => {
                    println!("  state: failed: {error}");
                }
                _ => println!("  state: {}", m.state),
            }
        }
    }
}

/// How to prove control of `d`'s hostname.
fn print_ownership(d: &Domain, app: &str) {
    let Some(o) = &d.ownership else { return };
    if o.verified {
        println!("{} now serves {app}", d.hostname);
        return;
    }
    println!(
        "{} is added to {app}; it serves once you prove you control it, either way:",
        d.hostname
    );
    if let Some(record) = &o.dns_record {
        println!("  DNS:  add the record  {record}");
    }
    if let Some(url) = &o.http_url {
        println!(
            "  HTTP: point {} at the platform; its gateways answer {url}",
            d.hostname
        );
    }
    println!(
        "then `gannet domains verify {} --app {app}` (the platform also checks by itself)",
        d.hostname
    );
}

/// Seconds since the epoch, now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2027-02-22 (in 89 days)` or `2026-01-01 (expired)`.
fn expiry(not_after: i64, now: i64) -> String {
    let date = civil_date(not_after);
    if not_after <= now {
        return format!("{date} (expired)");
    }
    format!("{date} (in {} days)", (not_after - now) / 86_400)
}

/// The UTC calendar date of unix time `secs` (Howard Hinnant's
/// days-to-civil algorithm).
pub(crate) fn civil_date(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn when(ms: i64) -> String {
    let secs = ms / 1000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(secs);
    let ago = (now - secs).max(0);
    match ago {
        0..60 => format!("{ago}s ago"),
        60..3600 => format!("{}m ago", ago / 60),
        3600..86400 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    }
}

/// How long ago `ms` (ms since the epoch) was: "12 s ago", "5 min ago",
/// "3 h ago", "2 d ago"; "never" without one.
fn last_contact(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(ms);
    let ago = (now - ms).max(0) / 1000;
    match ago {
        0..120 => format!("{ago} s ago"),
        120..7200 => format!("{} min ago", ago / 60),
        7200..172_800 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86400),
    }
}

fn size(s: &Option<String>) -> Result<Option<ByteSize>> {
    s.as_deref()
        .map(|v| {
            v.parse::<ByteSize>()
                .with_context(|| format!("`{v}` is not a size (e.g. 64MiB)"))
        })
        .transpose()
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let json = cli.global.json;
    if let Command::Login { endpoint, token } = &cli.command {
        return login(endpoint, token, cli.global.ca_cert.as_deref(), json).await;
    }
    if let Command::Dev(args) = cli.command {
        return crate::dev::run(args, json).await;
    }
    let resolved = settings::resolve(
        cli.global.endpoint.clone(),
        cli.global.token.clone(),
        cli.global.ca_cert.clone(),
    )?;
    let client = Client::new(
        &resolved.endpoint,
        &resolved.token,
        resolved.ca_cert.as_deref(),
    )?;
    match cli.command {
        Command::Login { .. } | Command::Dev(_) => unreachable!("handled above"),
        Command::Status { app } => status(&client, &app, json).await?,
        Command::Admin(AdminCommand::Pops(cmd)) => pops(&client, cmd, json).await?,
        Command::Admin(AdminCommand::Gateways(cmd)) => gateways(&client, cmd, json).await?,
        Command::Admin(AdminCommand::Certs(CertsCommand::Renew { hostname })) => {
            client
                .post_empty(&format!("/v1/admin/domains/{hostname}/renew"))
                .await?;
            if json {
                return print_json(&serde_json::json!({ "hostname": hostname, "renewing": true }));
            }
            println!(
                "{hostname}: a new certificate is being obtained (`gannet domains list` shows when it is issued)"
            );
        }
        Command::Admin(AdminCommand::Certs(CertsCommand::Set { cert, key, .. })) => {
            let upload = CertificateUpload {
                cert_pem: read_pem(&cert, "certificate")?,
                key_pem: read_pem(&key, "private key")?,
            };
            let c: CertificateSummary = client
                .put("/v1/admin/platform-certificate", &upload)
                .await?;
            if json {
                return print_json(&c);
            }
            println!(
                "platform certificate set: {} (issuer {}, expires {}); gateways serve it within the sync time",
                c.names.join(","),
                c.issuer,
                expiry(c.not_after, unix_now())
            );
        }
        Command::Admin(AdminCommand::Certs(CertsCommand::Show { .. })) => {
            let c: CertificateSummary = client.get("/v1/admin/platform-certificate").await?;
            if json {
                return print_json(&c);
            }
            println!("names    {}", c.names.join(","));
            println!("issuer   {}", c.issuer);
            println!("expires  {}", expiry(c.not_after, unix_now()));
        }
        Command::Whoami => {
            let me: WhoAmI = client.get("/v1/whoami").await?;
            if json {
                return print_json(&me);
            }
            match &me.tenant {
                None => println!("operator"),
                Some(t) => {
                    println!("tenant {}", t.name);
                    println!("apps     {} of {}", me.apps, t.quotas.max_apps);
                    println!(
                        "storage  {} of {}",
                        ByteSize(me.stored_bytes),
                        t.quotas.max_total_bytes
                    );
                }
            }
        }
        Command::Apps(cmd) => apps(&client, cmd, json).await?,
        Command::Rollout(cmd) => rollout::command(&client, cmd, json).await?,
        Command::Secrets(cmd) => settings_cmd::secrets(&client, cmd, json).await?,
        Command::Config(cmd) => settings_cmd::config(&client, cmd, json).await?,
        Command::Deploy(args) => deploy(&client, args, json).await?,
        Command::Versions { app } => {
            let versions: Vec<Version> = client.get(&format!("/v1/apps/{app}/versions")).await?;
            if json {
                return print_json(&versions);
            }
            println!(
                "{:<8} {:<8} {:<14} {:<10} {}",
                "VERSION", "LIVE", "DIGEST", "SIZE", "CREATED"
            );
            for v in versions {
                println!(
                    "{:<8} {:<8} {:<14} {:<10} {}",
                    v.number,
                    if v.active { "*" } else { "" },
                    v.digest.short(),
                    ByteSize(v.size_bytes).to_string(),
                    when(v.created_ms)
                );
            }
        }
        Command::Rollback { app, to } => {
            let a: App = client
                .post(&format!("/v1/apps/{app}/rollback"), &Rollback { to })
                .await?;
            if json {
                return print_json(&a);
            }
            println!(
                "{} is now at version {}: an immediate rollback, at every PoP at once \
                 (no canary steps; any live rollout was ended)",
                a.name,
                a.active_version.unwrap_or(0)
            );
        }
        Command::Domains(DomainsCommand::Add {
            hostname,
            app,
            cert,
            key,
            managed,
        }) => {
            let certificate = match (cert, key) {
                (Some(cert), Some(key)) => Some(CertificateUpload {
                    cert_pem: read_pem(&cert, "certificate")?,
                    key_pem: read_pem(&key, "private key")?,
                }),
                _ => None,
            };
            let with_cert = certificate.is_some();
            let a: App = client
                .post(
                    &format!("/v1/apps/{app}/domains"),
                    &AddDomain {
                        hostname: hostname.clone(),
                        certificate,
                        managed: managed.then_some(true),
                    },
                )
                .await?;
            if json {
                return print_json(&a);
            }
            if with_cert {
                let domains: Vec<Domain> = client.get(&format!("/v1/apps/{app}/domains")).await?;
                match domains.iter().find(|d| d.hostname == hostname) {
                    Some(d) if !d.ownership.as_ref().is_none_or(|o| o.verified) => {
                        print_ownership(d, &app)
                    }
                    _ => println!("{hostname} now serves {} with its own certificate", a.name),
                }
            } else {
                // Whether the platform manages it: the listing says.
                let domains: Vec<Domain> = client.get(&format!("/v1/apps/{app}/domains")).await?;
                match domains.iter().find(|d| d.hostname == hostname) {
                    Some(d) if d.managed.is_some() => println!(
                        "{hostname} will serve {} once its certificate is issued (`gannet domains list --app {app}` shows progress)",
                        a.name
                    ),
                    Some(d) => print_ownership(d, &app),
                    None => println!("{hostname} now serves {}", a.name),
                }
            }
        }
        Command::Domains(DomainsCommand::List { app }) => {
            let path = match &app {
                Some(app) => format!("/v1/apps/{app}/domains"),
                None => "/v1/domains".to_string(),
            };
            let domains: Vec<Domain> = client.get(&path).await?;
            if json {
                return print_json(&domains);
            }
            print_domains(&domains);
        }
        Command::Domains(DomainsCommand::Verify { hostname, app }) => {
            let d: Domain = client
                .post(
                    &format!("/v1/apps/{app}/domains/{hostname}/verify"),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                return print_json(&d);
            }
            let how = d
                .ownership
                .as_ref()
                .and_then(|o| o.verified_by.clone())
                .unwrap_or_default();
            println!("{hostname} is verified ({how}); it serves {app} within the sync time");
        }
        Command::Admin(AdminCommand::Domains(AdminDomainsCommand::List { legacy, unverified })) => {
            let mut path = "/v1/admin/domains".to_string();
            if legacy {
                path.push_str("?verified_by=legacy");
            } else if unverified {
                path.push_str("?unverified=true");
            }
            let domains: Vec<serde_json::Value> = client.get(&path).await?;
            if json {
                return print_json(&domains);
            }
            println!(
                "{:<40} {:<16} {:<16} VERIFIED BY",
                "HOSTNAME", "TENANT", "APP"
            );
            for d in &domains {
                println!(
                    "{:<40} {:<16} {:<16} {}",
                    d["hostname"].as_str().unwrap_or_default(),
                    d["tenant"].as_str().unwrap_or_default(),
                    d["app"].as_str().unwrap_or_default(),
                    d["verified_by"].as_str().unwrap_or("(waiting for a proof)")
                );
            }
        }
        Command::Admin(AdminCommand::Domains(AdminDomainsCommand::Verify { hostname })) => {
            client
                .post_empty(&format!("/v1/admin/domains/{hostname}/verify"))
                .await?;
            if json {
                return print_json(&serde_json::json!({ "hostname": hostname, "verified": true }));
            }
            println!("{hostname} is verified (operator); it serves within the sync time");
        }
        Command::Domains(DomainsCommand::Remove { hostname, app }) => {
            client
                .delete(&format!("/v1/apps/{app}/domains/{hostname}"))
                .await?;
            if json {
                return print_json(&serde_json::json!({"removed": hostname}));
            }
            println!("{hostname} removed from {app}");
        }
        Command::Tokens(cmd) => tokens(&client, cmd, json).await?,
        Command::Audit => {
            let entries: Vec<AuditEntry> = client.get("/v1/audit").await?;
            if json {
                return print_json(&entries);
            }
            println!(
                "{:<10} {:<18} {:<24} {}",
                "WHEN", "ACTION", "TARGET", "TOKEN"
            );
            for e in entries {
                println!(
                    "{:<10} {:<18} {:<24} {}",
                    when(e.at_ms),
                    e.action,
                    e.target,
                    e.token_id.map_or("-".into(), |t| t.to_string())
                );
            }
        }
        Command::Admin(AdminCommand::Tenants(cmd)) => tenants(&client, cmd, json).await?,
    }
    Ok(())
}

async fn login(
    endpoint: &str,
    token: &str,
    ca_cert: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let ca_cert = ca_cert.map(settings::absolute_ca_cert).transpose()?;
    let client = Client::new(endpoint, token, ca_cert.as_deref())?;
    let me: WhoAmI = client
        .get("/v1/whoami")
        .await
        .context("checking the token")?;
    let path = settings::save(&settings::Login {
        endpoint: Some(endpoint.trim_end_matches('/').to_string()),
        token: Some(token.to_string()),
        ca_cert,
    })?;
    if json {
        return print_json(&me);
    }
    match &me.tenant {
        Some(t) => println!("logged in to {endpoint} as tenant {}", t.name),
        None => println!("logged in to {endpoint} as operator"),
    }
    eprintln!("saved to {}", path.display());
    Ok(())
}

async fn apps(client: &Client, cmd: AppsCommand, json: bool) -> Result<()> {
    match cmd {
        AppsCommand::Create {
            name,
            place,
            affinity,
        } => {
            let create = CreateApp {
                name,
                placement: place,
                affinity,
            };
            let a: App = client.post("/v1/apps", &create).await?;
            if json {
                return print_json(&a);
            }
            println!("created {} at {}", a.name, a.hostnames.join(", "));
            println!("{}", rollout::placement_line(&a));
            if create.affinity.is_some() {
                println!("affinity: {}", rollout::affinity_line(&a.affinity));
            }
        }
        AppsCommand::List => {
            let list: Vec<App> = client.get("/v1/apps").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<24} {:<8} {:<8} {:<20} {:<24} {}",
                "APP", "VERSION", "CANARY", "PLACEMENT", "POPS", "HOSTNAMES"
            );
            for a in list {
                let v = a.active_version.map_or("-".into(), |n| n.to_string());
                let canary = a.canary_version.map_or("-".into(), |n| n.to_string());
                let placement = if a.placement.is_empty() {
                    "(every PoP)"
                } else {
                    a.placement.as_str()
                };
                let pops = if a.pops.is_empty() {
                    "-".to_string()
                } else {
                    a.pops.join(",")
                };
                println!(
                    "{:<24} {:<8} {:<8} {:<20} {:<24} {}",
                    a.name,
                    v,
                    canary,
                    placement,
                    pops,
                    a.hostnames.join(", ")
                );
            }
        }
        AppsCommand::Show { name } => {
            let a: App = client.get(&format!("/v1/apps/{name}")).await?;
            if json {
                return print_json(&a);
            }
            println!("app       {}", a.name);
            println!(
                "version   {}",
                a.active_version.map_or("none".into(), |n| n.to_string())
            );
            if let Some(canary) = a.canary_version {
                println!(
                    "canary    version {canary}, rolling out (gannet rollout status --app {})",
                    a.name
                );
            }
            println!("hostnames {}", a.hostnames.join(", "));
            println!("placement {}", rollout::placement_line(&a));
            println!("affinity  {}", rollout::affinity_line(&a.affinity));
        }
        AppsCommand::Place { app, selector } => {
            let a: App = client
                .put(
                    &format!("/v1/apps/{app}/placement"),
                    &SetPlacement { selector },
                )
                .await?;
            if json {
                return print_json(&a);
            }
            println!("{}: {}", a.name, rollout::placement_line(&a));
        }
        AppsCommand::Affinity { app, value } => {
            let a: App = client
                .put(
                    &format!("/v1/apps/{app}/affinity"),
                    &SetAffinity { affinity: value },
                )
                .await?;
            if json {
                return print_json(&a);
            }
            println!(
                "{}: affinity {}",
                a.name,
                rollout::affinity_line(&a.affinity)
            );
        }
        AppsCommand::Policy {
            app,
            steps,
            bake,
            reset,
        } => {
            if !reset && steps.is_none() && bake.is_none() {
                anyhow::bail!("give --steps and/or --bake, or --reset for the platform's policy");
            }
            let bake_ms = bake
                .as_deref()
                .map(rollout::parse_bake)
                .transpose()?
                .map(|secs| secs.saturating_mul(1000));
            let a: App = client
                .put(
                    &format!("/v1/apps/{app}/rollout-policy"),
                    &RolloutPolicy { steps, bake_ms },
                )
                .await?;
            if json {
                return print_json(&a);
            }
            match &a.rollout_policy {
                None => println!(
                    "{}: canary deploys use the platform's rollout policy",
                    a.name
                ),
                Some(p) => println!(
                    "{}: canary deploys use steps {} with a bake of {}",
                    a.name,
                    p.steps.as_deref().unwrap_or("(the platform's)"),
                    p.bake_ms
                        .map_or("(the platform's)".to_string(), |ms| format!(
                            "{} s",
                            ms / 1000
                        ))
                ),
            }
        }
    }
    Ok(())
}

pub async fn deploy(client: &Client, args: DeployArgs, json: bool) -> Result<()> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let len = file.metadata().await?.len();
    let canary = args.strategy == Strategy::Canary;
    anyhow::ensure!(
        canary || (args.steps.is_none() && args.bake.is_none() && !args.wait),
        "--steps, --bake and --wait are for a progressive rollout: add --strategy canary"
    );
    anyhow::ensure!(
        !(canary && args.no_activate),
        "--no-activate uploads without serving the version anywhere: leave out --strategy canary"
    );
    let mut query: Vec<(String, String)> = Vec::new();
    for e in &args.env {
        anyhow::ensure!(e.contains('='), "--env `{e}` must be KEY=VALUE");
        query.push(("env".into(), e.clone()));
    }
    if let Some(m) = &args.memory {
        m.parse::<ByteSize>()
            .with_context(|| format!("--memory `{m}` is not a size (e.g. 64MiB)"))?;
        query.push(("memory".into(), m.clone()));
    }
    for (k, v) in [
        ("cpu_ms", args.cpu_ms),
        ("wall_ms", args.wall_ms),
        ("max_inflight", args.max_inflight.map(u64::from)),
    ] {
        if let Some(v) = v {
            query.push((k.into(), v.to_string()));
        }
    }
    for o in &args.outbound {
        query.push(("outbound".into(), o.clone()));
    }
    if args.no_activate {
        query.push(("activate".into(), "false".into()));
    }
    if canary {
        query.push(("strategy".into(), "canary".into()));
    }
    if let Some(steps) = &args.steps {
        query.push(("steps".into(), steps.clone()));
    }
    if let Some(bake) = &args.bake {
        let secs = rollout::parse_bake(bake)?;
        query.push(("bake".into(), format!("{secs}s")));
    }

    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", args.file.display()));
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            progress.inc(c.len() as u64);
        }
    });
    let req = client
        .request(Method::POST, &format!("/v1/apps/{}/versions", args.app))
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream));
    let result = client.send_with_headers::<Version>(req).await;
    bar.finish_and_clear();
    let (version, headers) = result?;
    // A rollout was started: the version is a canary, not live everywhere.
    let rollout_id: Option<i64> = headers
        .get("gannet-rollout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if !json {
        println!(
            "deployed {} version {} ({}, sha256:{}){}",
            args.app,
            version.number,
            ByteSize(version.size_bytes),
            version.digest.short(),
            if rollout_id.is_some() {
                " as a canary"
            } else if version.active {
                ""
            } else {
                " — not activated"
            }
        );
    }
    if let Some(id) = rollout_id {
        let follow = rollout::Follow {
            app: &args.app,
            id,
            wait: args.wait,
            wait_secs: args.wait_secs,
            json,
        };
        return rollout::follow_deploy(client, &follow, &version).await;
    }
    let revision: i64 = headers
        .get("gannet-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wait_secs = args.wait_secs.unwrap_or(60);
    if version.active && wait_secs > 0 {
        wait_live(
            client,
            &args.app,
            revision,
            std::time::Duration::from_secs(wait_secs),
            json,
        )
        .await?;
    }
    if json {
        return print_json(&version);
    }
    Ok(())
}

/// Waits until every gateway applied `revision` (or later), printing
/// progress; fails naming the PoPs that have not, and why. A gateway that
/// keeps refusing the revision for a second ends the wait at once.
pub async fn wait_live(
    client: &Client,
    app: &str,
    revision: i64,
    timeout: std::time::Duration,
    json: bool,
) -> Result<()> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut refused_since: Option<Instant> = None;
    loop {
        let status: serde_json::Value = client.get(&format!("/v1/apps/{app}/status")).await?;
        let gateways = status["gateways"].as_array().cloned().unwrap_or_default();
        if gateways.is_empty() {
            if !json {
                eprintln!("no gateways are registered yet: it goes live when one connects");
            }
            return Ok(());
        }
        // `current`: the gateway applied the app's latest change and did not
        // refuse this app's version in it.
        let current = |g: &serde_json::Value| {
            g["current"].as_bool().unwrap_or(false)
                && g["applied_revision"].as_i64().unwrap_or(-1) >= revision
        };
        let pops: std::collections::BTreeSet<&str> =
            gateways.iter().filter_map(|g| g["pop"].as_str()).collect();
        let live = pops
            .iter()
            .filter(|p| gateways.iter().filter(|g| g["pop"] == **p).all(current))
            .count();
        let line = format!("active at {live}/{} PoPs", pops.len());
        if !json && line != last {
            eprintln!("{line}");
            last = line;
        }
        if live == pops.len() {
            return Ok(());
        }
        let any_refused = gateways
            .iter()
            .any(|g| !current(g) && g["last_error"].is_string());
        refused_since = match (any_refused, refused_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        let refused_long = refused_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1));
        if refused_long || Instant::now() >= deadline {
            let waiting: Vec<String> = gateways
                .iter()
                .filter(|g| !current(g))
                .map(|g| {
                    let why = g["last_error"].as_str().map_or_else(
                        || "has not confirmed it".to_string(),
                        |e| format!("refused it: {e}"),
                    );
                    format!(
                        "PoP {} (gateway {}) {why}",
                        g["pop"].as_str().unwrap_or("?"),
                        g["gateway"]
                    )
                })
                .collect();
            anyhow::bail!("{app} is not live everywhere:\n  {}", waiting.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(client: &Client, app: &str, json: bool) -> Result<()> {
    let status: serde_json::Value = client.get(&format!("/v1/apps/{app}/status")).await?;
    if json {
        return print_json(&status);
    }
    let revision = status["revision"].as_i64().unwrap_or(0);
    println!(
        "{app}: version {} (revision {revision})",
        status["active_version"]
            .as_u64()
            .map_or("none".into(), |v| v.to_string())
    );
    println!(
        "{:<12} {:<8} {:<6} {:<8} {:<10} {:<8} {:<10} {}",
        "POP", "GATEWAY", "LIVE", "VERSION", "REQUESTS", "ERRORS", "MEAN MS", "LAST ERROR"
    );
    for g in status["gateways"].as_array().cloned().unwrap_or_default() {
        let live = g["current"].as_bool().unwrap_or(false);
        println!(
            "{:<12} {:<8} {:<6} {:<8} {:<10} {:<8} {:<10} {}",
            g["pop"].as_str().unwrap_or("?"),
            g["gateway"].to_string(),
            if live { "yes" } else { "no" },
            g["version"].as_u64().map_or("-".into(), |v| v.to_string()),
            g["requests"].to_string(),
            g["errors"].to_string(),
            format!(
                "{:.2}",
                g["mean_latency_us"].as_f64().unwrap_or(0.0) / 1000.0
            ),
            g["last_error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn pops(client: &Client, cmd: PopsCommand, json: bool) -> Result<()> {
    match cmd {
        PopsCommand::Create {
            name,
            region,
            labels,
        } => {
            let mut map = serde_json::Map::new();
            for l in labels.iter().filter(|l| !l.is_empty()) {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("label `{l}` must be k=v"))?;
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let pop: serde_json::Value = client
                .post(
                    "/v1/admin/pops",
                    &serde_json::json!({"name": name, "region": region, "labels": map}),
                )
                .await?;
            if json {
                return print_json(&pop);
            }
            println!("PoP {name} created");
        }
        PopsCommand::List => {
            let list: serde_json::Value = client.get("/v1/admin/pops").await?;
            if json {
                return print_json(&list);
            }
            println!("{:<16} {:<10} {}", "POP", "REGION", "LABELS");
            for p in list.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<16} {:<10} {}",
                    p["name"].as_str().unwrap_or(""),
                    p["region"].as_str().unwrap_or(""),
                    p["labels"]
                );
            }
        }
    }
    Ok(())
}

async fn gateways(client: &Client, cmd: GatewaysCommand, json: bool) -> Result<()> {
    match cmd {
        GatewaysCommand::Token { pop } => {
            let t: serde_json::Value = client
                .post(
                    &format!("/v1/admin/pops/{pop}/gateways"),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                return print_json(&t);
            }
            println!("{}", t["token"].as_str().unwrap_or(""));
            eprintln!(
                "node token for gateway {} of PoP {pop}; shown only once",
                t["gateway_id"]
            );
        }
        GatewaysCommand::List => {
            let list: Vec<serde_json::Value> = client.get("/v1/admin/gateways").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<12} {:<8} {:<10} {:<8} {:<9} {:<6} {:<12} {:<7} {:<8} {}",
                "POP",
                "GATEWAY",
                "VERSION",
                "ARCH",
                "REVISION",
                "LAG",
                "LAST CONTACT",
                "STATUS",
                "REFUSED",
                "LAST ERROR"
            );
            for g in &list {
                println!(
                    "{:<12} {:<8} {:<10} {:<8} {:<9} {:<6} {:<12} {:<7} {:<8} {}",
                    g["pop"].as_str().unwrap_or("?"),
                    g["id"].to_string(),
                    g["gannet_version"].as_str().unwrap_or("-"),
                    g["arch"].as_str().unwrap_or("-"),
                    g["applied_revision"].to_string(),
                    g["lag"].as_i64().unwrap_or(0),
                    last_contact(g["last_seen_ms"].as_i64()),
                    if g["silent"].as_bool().unwrap_or(false) {
                        "SILENT"
                    } else {
                        "ok"
                    },
                    g["failed_apps"].as_array().map_or(0, Vec::len),
                    g["last_error"].as_str().unwrap_or("")
                );
                for f in g["failed_apps"].as_array().into_iter().flatten() {
                    println!(
                        "         refused {}@{}: {}",
                        f["key"].as_str().unwrap_or("?"),
                        f["version"],
                        f["error"].as_str().unwrap_or("")
                    );
                }
            }
        }
        GatewaysCommand::Revoke { id } => {
            client.delete(&format!("/v1/admin/gateways/{id}")).await?;
            if json {
                return print_json(&serde_json::json!({"revoked": id}));
            }
            println!("gateway {id} revoked");
        }
    }
    Ok(())
}

async fn tokens(client: &Client, cmd: TokensCommand, json: bool) -> Result<()> {
    match cmd {
        TokensCommand::List => {
            let list: Vec<TokenInfo> = client.get("/v1/tokens").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<6} {:<16} {:<12} {:<12} {}",
                "ID", "LABEL", "CREATED", "LAST USED", "STATE"
            );
            for t in list {
                println!(
                    "{:<6} {:<16} {:<12} {:<12} {}",
                    t.id,
                    t.label,
                    when(t.created_ms),
                    t.last_used_ms.map_or("never".into(), when),
                    if t.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
        TokensCommand::Create => {
            let t: TokenCreated = client.post("/v1/tokens", &serde_json::json!({})).await?;
            if json {
                return print_json(&t);
            }
            println!("{}", t.token);
            eprintln!("token {} created; it is shown only once", t.info.id);
        }
        TokensCommand::Revoke { id } => {
            client.delete(&format!("/v1/tokens/{id}")).await?;
            if json {
                return print_json(&serde_json::json!({"revoked": id}));
            }
            println!("token {id} revoked");
        }
    }
    Ok(())
}

async fn tenants(client: &Client, cmd: TenantsCommand, json: bool) -> Result<()> {
    match cmd {
        TenantsCommand::Create {
            name,
            max_apps,
            max_component_size,
            max_total_bytes,
            max_versions,
            max_memory,
            max_cpu_ms,
            max_wall_ms,
            max_tokens,
            max_inflight,
        } => {
            let quotas = QuotaPatch {
                max_apps,
                max_component_size: size(&max_component_size)?,
                max_total_bytes: size(&max_total_bytes)?,
                max_versions_per_app: max_versions,
                max_memory: size(&max_memory)?,
                max_cpu_ms,
                max_wall_ms,
                max_tokens,
                max_inflight,
            };
            let created: TenantCreated = client
                .post("/v1/admin/tenants", &CreateTenant { name, quotas })
                .await?;
            if json {
                return print_json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "tenant {} created; give it the token above (shown only once)",
                created.tenant.name
            );
        }
        TenantsCommand::List => {
            let list: Vec<Tenant> = client.get("/v1/admin/tenants").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<24} {:<6} {:<12} {:<12}",
                "TENANT", "APPS", "COMPONENT", "STORAGE"
            );
            for t in list {
                println!(
                    "{:<24} {:<6} {:<12} {:<12}",
                    t.name,
                    t.quotas.max_apps,
                    t.quotas.max_component_size.to_string(),
                    t.quotas.max_total_bytes.to_string()
                );
            }
        }
        TenantsCommand::Token { name } => {
            let t: TokenCreated = client
                .post(
                    &format!("/v1/admin/tenants/{name}/tokens"),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                return print_json(&t);
            }
            println!("{}", t.token);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0), "1970-01-01");
        assert_eq!(super::civil_date(951_782_400), "2000-02-29");
        assert_eq!(super::civil_date(2_208_988_800), "2040-01-01");
        assert_eq!(super::civil_date(-86_400), "1969-12-31");
    }
}
