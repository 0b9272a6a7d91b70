//! The scheduler's leadership across replicas: two real control API
//! processes on one Postgres database, one leading the rollouts through the
//! lease row. A leader frozen (SIGSTOP) loses the lease to the other once it
//! runs out, and when it thaws it acts on nothing; a leader killed hands its
//! rollouts over the same way. Every write the scheduler makes carries its
//! epoch, which the test reads back from the database.

use crate::{Caller, example};
use gannet_control_api::testing::{Backend, OPERATOR_TOKEN, TEST_MASTER_KEY, TestDb, backends};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A control API process: killed (and continued, if stopped) on drop.
struct Replica {
    child: std::process::Child,
    url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn start(db: &TestDb, dir: &std::path::Path) -> Replica {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gannet-control-api"))
            .args(["--listen", "127.0.0.1:0", "--database-url", &db.url])
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--scheduler-lease-secs",
                "2",
                "--analysis-interval-secs",
                "1",
            ])
            .env("GANNET_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("GANNET_MASTER_KEY", TEST_MASTER_KEY)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = loop {
            let line = lines.next().expect("control API exited").unwrap();
            seen.lock().unwrap().push(line.clone());
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Replica {
            child,
            url,
            lines: seen,
        }
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.signal_quiet("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn signal_quiet(&self, sig: &str) -> std::io::Result<std::process::ExitStatus> {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
    }
}

/// The lease row: (holder, epoch).
async fn lease(db: &TestDb) -> (String, i64) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let row = sqlx::query("SELECT holder, epoch FROM scheduler_lease WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (row.get("holder"), row.get("epoch"))
}

/// The app's rollout row: (phase, leader epoch of its last write).
async fn rollout_row(db: &TestDb) -> (String, i64) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let row = sqlx::query("SELECT phase, leader_epoch FROM rollouts ORDER BY id DESC LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (row.get("phase"), row.get("leader_epoch"))
}

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(t: &Caller) -> Value {
    let r = t.get("/v1/apps/shop/rollout").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_leads_and_a_frozen_or_killed_leader_hands_over_without_acting() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replicas = [
        Replica::start(&db, d1.path()),
        Replica::start(&db, d2.path()),
    ];
    let op = Caller::operator(&replicas[0].url);
    let r = op
        .post(
            "/v1/admin/pops",
            json!({"name": "fra1", "region": "eu", "labels": {"region": "eu"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let acme = op.create_tenant("acme", json!({})).await;
    assert_eq!(
        acme.post("/v1/apps", json!({"name": "shop"})).await.status,
        StatusCode::CREATED
    );
    let v = acme.deploy("shop", example("hello"), &[]).await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.json);
    let v = acme
        .deploy(
            "shop",
            example("hello"),
            &[
                ("env", "GREETING=v2"),
                ("strategy", "canary"),
                ("steps", "30%; 60%; 100%"),
                ("bake", "1s"),
            ],
        )
        .await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.json);

    // One of them leads and starts the rollout (no gateway will ACK, so it
    // stays at its first step until someone promotes it).
    let (holder, epoch) = wait_for("a leader", Duration::from_secs(20), async || {
        let (holder, epoch) = lease(&db).await;
        (!holder.is_empty() && epoch > 0).then_some((holder, epoch))
    })
    .await;
    wait_for("the first step", Duration::from_secs(20), async || {
        (status(&acme).await["phase"] == "progressing").then_some(())
    })
    .await;
    let leader = replicas
        .iter()
        .position(|r| r.logged(&holder))
        .expect("the leader logged its holder id");
    let follower = 1 - leader;
    assert_eq!(rollout_row(&db).await, ("progressing".into(), epoch));

    // Frozen: the other replica takes the lease once it runs out, with a
    // higher epoch, and applies a tenant's action under it.
    replicas[leader].signal("STOP");
    let (holder2, epoch2) = wait_for("a takeover", Duration::from_secs(20), async || {
        let (h, e) = lease(&db).await;
        (h != holder).then_some((h, e))
    })
    .await;
    assert!(epoch2 > epoch, "{epoch2} after {epoch}");
    assert!(replicas[follower].logged(&holder2));
    let on_follower = Caller::new(&replicas[follower].url, &acme.token);
    let r = on_follower
        .post("/v1/apps/shop/rollout/promote", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    wait_for("the promotion", Duration::from_secs(20), async || {
        (status(&on_follower).await["step"] == json!(2)).then_some(())
    })
    .await;
    assert_eq!(rollout_row(&db).await.1, epoch2);

    // Thawed: the old leader finds the lease gone and acts on nothing; an
    // action asked of it is applied by the new leader.
    replicas[leader].signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lease(&db).await.0,
        holder2,
        "the thawed replica took the lease back"
    );
    let on_old = Caller::new(&replicas[leader].url, &acme.token);
    let r = on_old.post("/v1/apps/shop/rollout/pause", json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    wait_for("the pause", Duration::from_secs(20), async || {
        (status(&on_old).await["phase"] == "paused").then_some(())
    })
    .await;
    assert_eq!(rollout_row(&db).await, ("paused".into(), epoch2));
    assert!(
        replicas[leader].logged("stepping down") || !replicas[leader].logged("rollout transition"),
        "the thawed replica neither stepped down nor stayed idle"
    );

    // Killed: the frozen-then-thawed replica takes over and goes on.
    let [a, b] = replicas;
    let (survivor, dead) = if leader == 0 { (a, b) } else { (b, a) };
    drop(dead);
    let (_, epoch3) = wait_for("a second takeover", Duration::from_secs(20), async || {
        let (h, e) = lease(&db).await;
        (h != holder2).then_some((h, e))
    })
    .await;
    assert!(epoch3 > epoch2);
    let on_survivor = Caller::new(&survivor.url, &acme.token);
    let r = on_survivor
        .post("/v1/apps/shop/rollout/resume", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    wait_for("the resume", Duration::from_secs(20), async || {
        (status(&on_survivor).await["phase"] == "progressing").then_some(())
    })
    .await;
    assert_eq!(rollout_row(&db).await, ("progressing".into(), epoch3));
    let r = on_survivor
        .post("/v1/apps/shop/rollout/abort", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let done = wait_for("the abort", Duration::from_secs(20), async || {
        let s = status(&on_survivor).await;
        (s["phase"] == "aborted").then_some(s)
    })
    .await;
    assert!(
        done["reason"].as_str().unwrap_or("").contains("operator"),
        "{done:#}"
    );
    // The audit log has the scheduler's transitions.
    let audit = acme.get("/v1/audit").await.json.to_string();
    assert!(audit.contains("rollout.aborted"), "{audit}");
}
