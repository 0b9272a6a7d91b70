//! The CLI's link to the control API: HTTPS verified against the built-in
//! public roots plus `--ca-cert` (or GANNET_CA_CERT, or the CA stored by
//! `gannet login`), with real handshakes against a CA made in the test; and
//! plain http:// refused unless the control API is on loopback.

use crate::Cli;
use gannet_control_api::testing::{Backend, OPERATOR_TOKEN, TestApi, TestCa, TestDb};

#[tokio::test(flavor = "multi_thread")]
async fn ca_cert_adds_trust_in_a_private_ca_and_plain_http_is_refused_off_loopback() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ca = TestCa::new("Gannet CLI test CA");
    let api = TestApi::start_tls(&db, &ca.issue(&["localhost", "127.0.0.1"])).await;
    let https = api.https_url();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let ca_path = ca_file.to_str().unwrap();
    let other_ca = TestCa::new("Some other CA").write(dir.path(), "other-ca.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let operator = [
        ("GANNET_ENDPOINT", https.as_str()),
        ("GANNET_TOKEN", OPERATOR_TOKEN),
    ];
    let cli = Cli::new();

    // The public roots alone do not trust the private CA: the handshake
    // fails on the certificate (exit 2), and the error says what to do.
    cli.fails(
        &["whoami"],
        &operator,
        2,
        "control API certificate not trusted",
    )
    .await;
    cli.fails(&["whoami"], &operator, 2, "--ca-cert").await;
    // Trusting it, by flag or by environment: served.
    let out = cli.ok(&["whoami", "--ca-cert", ca_path], &operator).await;
    assert!(out.contains("operator"), "{out}");
    let mut with_env = operator.to_vec();
    with_env.push(("GANNET_CA_CERT", ca_path));
    let out = cli.ok(&["whoami"], &with_env).await;
    assert!(out.contains("operator"), "{out}");
    // Another CA: still not trusted.
    cli.fails(
        &["whoami", "--ca-cert", other_ca.to_str().unwrap()],
        &operator,
        2,
        "UnknownIssuer",
    )
    .await;
    // CA files that cannot be used: refused before connecting (exit 1).
    cli.fails(
        &["whoami", "--ca-cert", garbage.to_str().unwrap()],
        &operator,
        1,
        "holds no certificate",
    )
    .await;
    cli.fails(
        &["whoami", "--ca-cert", missing.to_str().unwrap()],
        &operator,
        1,
        "reading the CA certificates",
    )
    .await;

    // `gannet login --ca-cert` stores the CA (as an absolute path): later
    // commands trust it without the flag.
    let out = cli
        .ok(
            &[
                "login",
                "--endpoint",
                &https,
                "--token",
                OPERATOR_TOKEN,
                "--ca-cert",
                ca_path,
            ],
            &[],
        )
        .await;
    assert!(out.contains("as operator"), "{out}");
    let stored = std::fs::read_to_string(cli.config_file()).unwrap();
    assert!(stored.contains("ca_cert"), "{stored}");
    let stored_ca: toml::Table = toml::from_str(&stored).unwrap();
    assert!(
        std::path::Path::new(stored_ca["ca_cert"].as_str().unwrap()).is_absolute(),
        "{stored}"
    );
    assert!(cli.ok(&["whoami"], &[]).await.contains("operator"));

    // Plain http:// to a host that is not loopback: refused before anything
    // is sent, for every command and for login (which then stores nothing).
    for url in [
        "http://192.0.2.10:7070",
        "http://api.example.com",
        "http://0.0.0.0:7070",
    ] {
        cli.fails(
            &["whoami"],
            &[("GANNET_ENDPOINT", url), ("GANNET_TOKEN", OPERATOR_TOKEN)],
            1,
            "refusing control API URL",
        )
        .await;
        cli.fails(
            &["login", "--endpoint", url, "--token", OPERATOR_TOKEN],
            &[],
            1,
            "use https://",
        )
        .await;
    }
    assert!(cli.ok(&["whoami"], &[]).await.contains("operator"));
    assert_eq!(std::fs::read_to_string(cli.config_file()).unwrap(), stored);
    // A URL without a scheme is refused too, saying what is expected.
    cli.fails(
        &["whoami"],
        &[
            ("GANNET_ENDPOINT", "api.example.com:7070"),
            ("GANNET_TOKEN", OPERATOR_TOKEN),
        ],
        1,
        "expected https://",
    )
    .await;

    // Plain http:// on loopback is still fine (the API's plain listener).
    let plain = [
        ("GANNET_ENDPOINT", api.url()),
        ("GANNET_TOKEN", OPERATOR_TOKEN.to_string()),
    ];
    let plain: Vec<(&str, &str)> = plain.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(cli.ok(&["whoami"], &plain).await.contains("operator"));
}
