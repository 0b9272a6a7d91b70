//! The tenant flow through the real `gannet` binary against the control API
//! (in-process, real socket), on SQLite and on Postgres.

mod sync;
mod tls;

use gannet_control_api::testing::{OPERATOR_TOKEN, TestApi, TestCa, TestDb, backends};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Runs `gannet` with `args`, a private HOME, and `env`.
pub(crate) struct Cli {
    home: tempfile::TempDir,
}

impl Cli {
    pub(crate) fn new() -> Self {
        Cli {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gannet"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.unwrap()
    }

    /// Runs with `input` on stdin (not a terminal).
    pub(crate) async fn run_stdin(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        input: &str,
    ) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gannet"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        child.wait_with_output().await.unwrap()
    }

    pub(crate) async fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env).await;
        assert!(
            out.status.success(),
            "gannet {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) async fn json(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all, env).await).unwrap()
    }

    async fn fails(&self, args: &[&str], env: &[(&str, &str)], code: i32, stderr_has: &str) {
        let out = self.run(args, env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "gannet {args:?}: {stderr}");
        assert!(
            stderr.contains(stderr_has),
            "gannet {args:?}: wanted {stderr_has:?} in:\n{stderr}"
        );
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join(".config/gannet/config.toml")
    }
}

pub(crate) fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run `bash examples/build.sh`",
        p.display()
    );
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_flow_through_the_cli() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let api = TestApi::start(&db).await;
        let url = api.url();
        let operator = [
            ("GANNET_ENDPOINT", url.as_str()),
            ("GANNET_TOKEN", OPERATOR_TOKEN),
        ];
        let cli = Cli::new();

        // The operator creates a tenant with quotas; the token comes back once.
        let created = cli
            .json(
                &[
                    "admin",
                    "tenants",
                    "create",
                    "acme",
                    "--max-apps",
                    "5",
                    "--max-component-size",
                    "20MiB",
                    "--max-memory",
                    "128MiB",
                ],
                &operator,
            )
            .await;
        assert_eq!(created["tenant"]["name"], "acme");
        assert_eq!(created["tenant"]["quotas"]["max_component_size"], 20 << 20);
        let token = created["token"].as_str().unwrap().to_string();
        let list = cli.ok(&["admin", "tenants", "list"], &operator).await;
        assert!(list.contains("acme"), "{list}");

        // Before login, commands say what to do.
        cli.fails(&["apps", "list"], &[], 1, "gannet login").await;
        // Login checks the token and stores it privately.
        cli.fails(
            &["login", "--endpoint", &url, "--token", "gnt_wrong"],
            &[],
            1,
            "unknown token",
        )
        .await;
        let out = cli
            .ok(&["login", "--endpoint", &url, "--token", &token], &[])
            .await;
        assert!(out.contains("as tenant acme"), "{out}");
        let mode = std::fs::metadata(cli.config_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "config file mode {mode:o}");

        let out = cli.ok(&["apps", "create", "shop"], &[]).await;
        assert!(out.contains("shop-acme.localhost"), "{out}");
        let v1 = cli
            .json(
                &[
                    "deploy",
                    &example("hello"),
                    "--app",
                    "shop",
                    "--env",
                    "GREETING=hey",
                    "--memory",
                    "64MiB",
                    "--cpu-ms",
                    "20",
                ],
                &[],
            )
            .await;
        assert_eq!(
            (v1["number"].as_u64(), v1["active"].as_bool()),
            (Some(1), Some(true))
        );
        assert_eq!(v1["env"]["GREETING"], "hey");
        assert_eq!(v1["limits"]["memory"], 64 << 20);
        let out = cli
            .ok(&["deploy", &example("echo"), "--app", "shop"], &[])
            .await;
        assert!(out.contains("deployed shop version 2"), "{out}");

        let versions = cli.json(&["versions", "--app", "shop"], &[]).await;
        let live: Vec<u64> = versions
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["active"] == true)
            .map(|v| v["number"].as_u64().unwrap())
            .collect();
        assert_eq!(live, vec![2]);
        let out = cli.ok(&["rollback", "--app", "shop"], &[]).await;
        assert!(out.contains("shop is now at version 1"), "{out}");
        let app = cli.json(&["apps", "show", "shop"], &[]).await;
        assert_eq!(app["active_version"], 1);
        cli.ok(&["rollback", "--app", "shop", "--to", "2"], &[])
            .await;
        cli.fails(
            &["rollback", "--app", "shop", "--to", "9"],
            &[],
            1,
            "has no version 9",
        )
        .await;

        // This control API has no ACME CA: a managed certificate is
        // refused with what to do instead, and nothing is added.
        cli.fails(
            &[
                "domains",
                "add",
                "shop.example.com",
                "--app",
                "shop",
                "--managed",
            ],
            &[],
            2,
            "(the operator has not set --acme-directory): upload your own",
        )
        .await;
        cli.ok(
            &["domains", "add", "shop.example.com", "--app", "shop"],
            &[],
        )
        .await;
        let app = cli.json(&["apps", "show", "shop"], &[]).await;
        assert_eq!(
            app["hostnames"],
            serde_json::json!(["shop-acme.localhost", "shop.example.com"])
        );

        // Its own certificate for another hostname: read from files, listed
        // with issuer, names and expiry, never the key; a key that is not
        // the certificate's is refused with the reason (exit 1).
        let ca = TestCa::new("Gannet CLI domains CA");
        let pem_dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(&["www.example.com"]).write(pem_dir.path(), "www");
        let (_, other_key) = ca
            .issue(&["www.example.com"])
            .write(pem_dir.path(), "other");
        let (cert, key, other_key) = (
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            other_key.to_str().unwrap(),
        );
        cli.fails(
            &[
                "domains",
                "add",
                "www.example.com",
                "--app",
                "shop",
                "--cert",
                cert,
                "--key",
                other_key,
            ],
            &[],
            1,
            "does not match",
        )
        .await;
        let out = cli
            .ok(
                &[
                    "domains",
                    "add",
                    "www.example.com",
                    "--app",
                    "shop",
                    "--cert",
                    cert,
                    "--key",
                    key,
                ],
                &[],
            )
            .await;
        // A certificate is no proof of control: the hostname serves once
        // its owner proves it, and the CLI says how.
        assert!(out.contains("prove you control it"), "{out}");
        assert!(
            out.contains("_gannet-challenge.www.example.com TXT"),
            "{out}"
        );
        assert!(
            out.contains("http://www.example.com/.well-known/gannet-challenge/"),
            "{out}"
        );
        // Nothing proves it here: refused with what each check found
        // (no DNS answers for example.com on this machine's test resolver,
        // or a non-public address), exit 1.
        cli.fails(
            &["domains", "verify", "www.example.com", "--app", "shop"],
            &[],
            1,
            "not proved yet",
        )
        .await;
        let listed = cli.ok(&["domains", "list"], &[]).await;
        assert!(
            listed.contains("not serving until control is proved"),
            "{listed}"
        );
        assert!(listed.contains("www.example.com"), "{listed}");
        assert!(listed.contains("Gannet CLI domains CA"), "{listed}");
        assert!(listed.contains("(in "), "no expiry shown: {listed}");
        assert!(!listed.contains("PRIVATE KEY"), "{listed}");
        let domains = cli.json(&["domains", "list", "--app", "shop"], &[]).await;
        let www = domains
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["hostname"] == "www.example.com")
            .unwrap();
        assert_eq!(
            www["certificate"]["names"],
            serde_json::json!(["www.example.com"])
        );
        assert!(domains["key_pem"].is_null() && !domains.to_string().contains("PRIVATE KEY"));
        // Without a pair, the platform's certificate serves it.
        let plain = domains
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["hostname"] == "shop.example.com")
            .unwrap();
        assert!(plain["certificate"].is_null());
        let table = cli.ok(&["apps", "list"], &[]).await;
        assert!(
            table.contains("shop") && table.contains("shop.example.com"),
            "{table}"
        );

        let audit = cli.json(&["audit"], &[]).await.to_string();
        for action in [
            "app.create",
            "version.create",
            "version.rollback",
            "domain.add",
        ] {
            assert!(audit.contains(action), "{action} missing from {audit}");
        }

        // Failures: a clear message and exit 1 for what the user can fix…
        let bogus = cli.home.path().join("bogus.wasm");
        std::fs::write(&bogus, b"not wasm at all").unwrap();
        cli.fails(
            &["deploy", bogus.to_str().unwrap(), "--app", "shop"],
            &[],
            1,
            "not a WebAssembly file",
        )
        .await;
        cli.fails(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--memory",
                "1GiB",
            ],
            &[],
            1,
            "above the tenant's ceiling",
        )
        .await;
        cli.fails(
            &["deploy", &example("hello"), "--app", "nope"],
            &[],
            1,
            "no app `nope`",
        )
        .await;
        cli.fails(
            &[
                "deploy",
                &example("hello"),
                "--app",
                "shop",
                "--memory",
                "lots",
            ],
            &[],
            1,
            "not a size",
        )
        .await;
        cli.fails(
            &["deploy", "/no/such.wasm", "--app", "shop"],
            &[],
            1,
            "opening /no/such.wasm",
        )
        .await;
        cli.fails(
            &["apps", "create", "Bad_Name"],
            &[],
            1,
            "not a valid app name",
        )
        .await;
        cli.fails(&["apps", "create", "shop"], &[], 1, "already exists")
            .await;
        // …and exit 2 when the control API cannot be reached.
        cli.fails(
            &["apps", "list"],
            &[("GANNET_ENDPOINT", "http://127.0.0.1:9")],
            2,
            "cannot reach the control API",
        )
        .await;

        // GANNET_TOKEN overrides the stored login; a revoked token stops at once.
        let second = cli.json(&["tokens", "create"], &[]).await;
        let second_token = second["token"].as_str().unwrap().to_string();
        let id = second["info"]["id"].as_i64().unwrap().to_string();
        cli.ok(&["whoami"], &[("GANNET_TOKEN", &second_token)])
            .await;
        cli.ok(&["tokens", "revoke", &id], &[]).await;
        cli.fails(
            &["whoami"],
            &[("GANNET_TOKEN", &second_token)],
            1,
            "revoked",
        )
        .await;
        let tokens = cli.ok(&["tokens", "list"], &[]).await;
        assert!(
            tokens.contains("revoked") && tokens.contains("active"),
            "{tokens}"
        );
    }
}
