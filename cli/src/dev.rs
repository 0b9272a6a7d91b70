//! `gannet dev`: the whole platform in one process — the control API on
//! SQLite under the state directory, one gateway following it, a `dev`
//! tenant — with the endpoints and a ready token printed and written to
//! `<state-dir>/dev.json`. With a component, it is deployed as an app named
//! after the file and redeployed whenever the file changes.

use crate::args::{DeployArgs, DevArgs, Strategy};
use crate::client::Client;
use anyhow::{Context, Result};
use gannet_control_api::{ApiConfig, AppState};
use gannet_gateway::{ControlPlane, Gateway, GatewayConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "dev";
const POP: &str = "dev";

fn read_or_create_secret(path: &Path) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "gnt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(path, &token).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}

/// The app name for a component file: its stem, lowercased, as an id.
fn app_name(file: &Path) -> Result<String> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the component file has no name")?;
    let name: String = stem
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    anyhow::ensure!(
        !name.is_empty(),
        "cannot name an app after {}",
        file.display()
    );
    Ok(name)
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs, json: bool) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let state = &args.state_dir;
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let operator_token = read_or_create_secret(&state.join("operator-token"))?;

    // Control API.
    let api_listener = gannet_server::bind(args.api_listen)
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
    // Clients in this process reach the API over loopback even when it
    // listens on every interface (plain http:// is refused otherwise).
    let mut api_addr = api_listener.local_addr()?;
    if api_addr.ip().is_unspecified() {
        api_addr.set_ip(match api_addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let api_url = format!("http://{api_addr}");
    let api_dir = state.join("api");
    std::fs::create_dir_all(&api_dir)?;
    let built = AppState::build(ApiConfig {
        database_url: format!("sqlite://{}", api_dir.join("gannet.db").display()),
        data_dir: api_dir.clone(),
        platform_domain: "localhost".into(),
        operator_token: Some(operator_token.clone()),
        rate_limit_per_sec: 0.0,
        tenant_rate_limit: 0,
        // dev makes its own master key (0600) and keeps it with its state,
        // so stored certificate keys open again after a restart.
        master_key: Some(
            gannet_control_api::master_key::MasterKey::load_or_create(&state.join("master.key"))
                .context("the dev master key")?,
        ),
        // Compiles run in a bounded child process of this binary (`gannet`
        // dispatches `__compile-worker` first thing in main).
        ..ApiConfig::default()
    })
    .await
    .context("starting the control API")?;
    let shutdown = CancellationToken::new();
    let api_task = tokio::spawn(gannet_control_api::serve(
        api_listener,
        built.state,
        shutdown.clone(),
    ));

    // The dev tenant, the dev PoP and a node token.
    let operator = Client::new(&api_url, &operator_token, None)?;
    let created: Result<serde_json::Value, _> = operator
        .post("/v1/admin/tenants", &serde_json::json!({"name": TENANT}))
        .await;
    let tenant_token = match created {
        Ok(v) => v["token"].as_str().unwrap_or_default().to_string(),
        Err(_) => {
            let t: serde_json::Value = operator
                .post(
                    &format!("/v1/admin/tenants/{TENANT}/tokens"),
                    &serde_json::json!({}),
                )
                .await?;
            t["token"].as_str().unwrap_or_default().to_string()
        }
    };
    let _ = operator
        .post::<_, serde_json::Value>(
            "/v1/admin/pops",
            &serde_json::json!({"name": POP, "region": "local"}),
        )
        .await;
    let node: serde_json::Value = operator
        .post(
            &format!("/v1/admin/pops/{POP}/gateways"),
            &serde_json::json!({}),
        )
        .await?;
    let node_token = node["token"].as_str().unwrap_or_default().to_string();

    // Gateway.
    let listener = gannet_server::bind(args.gateway_listen)
        .with_context(|| format!("binding the gateway to {}", args.gateway_listen))?;
    let admin = std::net::TcpListener::bind(args.admin_listen)
        .with_context(|| format!("binding the gateway admin to {}", args.admin_listen))?;
    let gateway_url = format!("http://{}", listener.local_addr()?);
    let admin_url = format!("http://{}", admin.local_addr()?);
    let gateway = Arc::new(
        Gateway::build(GatewayConfig {
            control: Some(ControlPlane {
                url: api_url.clone(),
                pop: POP.into(),
                node_token,
                state_dir: state.join("gateway"),
                poll_wait: Duration::from_secs(30),
                max_body: gannet_gateway::config::DEFAULT_MAX_COMPONENT_SIZE,
                trusted_cas: None,
                report_interval: gannet_gateway::DEFAULT_REPORT_INTERVAL,
            }),
            cache_dir: state.join("cache"),
            allow_private_outbound: true,
            ..GatewayConfig::default()
        })
        .await
        .context("starting the gateway")?,
    );
    let gateway_task = tokio::spawn(gateway.clone().run(listener, None, admin, shutdown.clone()));

    let info = serde_json::json!({
        "gateway_url": gateway_url,
        "api_url": api_url,
        "admin_url": admin_url,
        "tenant": TENANT,
        "token": tenant_token,
        "operator_token": operator_token,
    });
    std::fs::write(state.join("dev.json"), serde_json::to_vec_pretty(&info)?)?;
    if json {
        println!("{info}");
    } else {
        println!(
            "gateway   {gateway_url}   (apps at http://<app>-{TENANT}.localhost:{})",
            gateway_url.rsplit(':').next().unwrap_or("")
        );
        println!("api       {api_url}");
        println!("metrics   {admin_url}/metrics");
        println!("tenant    {TENANT}");
        println!("token     {tenant_token}");
        println!("          export GANNET_ENDPOINT={api_url} GANNET_TOKEN={tenant_token}");
        println!("state     {}/dev.json", state.display());
    }

    let tenant = Client::new(&api_url, &tenant_token, None)?;
    let watcher = match &args.component {
        Some(file) => {
            let name = app_name(file)?;
            let _ = tenant
                .post::<_, serde_json::Value>("/v1/apps", &serde_json::json!({"name": name}))
                .await;
            let app = name.clone();
            let deploy = move |file: &Path| DeployArgs {
                file: file.to_path_buf(),
                app: app.clone(),
                env: Vec::new(),
                memory: None,
                cpu_ms: None,
                wall_ms: None,
                max_inflight: None,
                outbound: Vec::new(),
                no_activate: false,
                strategy: Strategy::Immediate,
                steps: None,
                bake: None,
                wait: false,
                wait_secs: Some(30),
            };
            match crate::commands::deploy(&tenant, deploy(file), json).await {
                Ok(()) if !json => println!(
                    "serving {} at http://{name}-{TENANT}.localhost:{}/",
                    file.display(),
                    gateway_url.rsplit(':').next().unwrap_or("")
                ),
                Ok(()) => {}
                Err(e) => eprintln!("error: deploying {}: {e:#}", file.display()),
            }
            let file = file.clone();
            let token = shutdown.clone();
            Some(tokio::spawn(async move {
                let modified = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
                let mut seen: Option<SystemTime> = modified(&file);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    let now = modified(&file);
                    if now.is_some() && now != seen {
                        seen = now;
                        eprintln!("{} changed; redeploying", file.display());
                        if let Err(e) = crate::commands::deploy(&tenant, deploy(&file), json).await
                        {
                            eprintln!("error: redeploying {}: {e:#}", file.display());
                        }
                    }
                }
            }))
        }
        None => None,
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    if let Some(w) = watcher {
        let _ = w.await;
    }
    let _ = gateway_task.await;
    let _ = api_task.await;
    Ok(())
}
