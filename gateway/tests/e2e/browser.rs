//! A page served by a guest over HTTPS, loaded by a real browser: headless
//! Chromium trusting the test CA through an NSS database (as a user's
//! browser trusts a CA given to it, not by ignoring certificate errors),
//! the page's inline script run, and the DOM it rendered checked. The
//! control: the same browser without the CA renders nothing.

use crate::certs::{CertFiles, arg, leaf};
use crate::harness::{Gateway, Http, app, shared_cache};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the `page` example's script writes into `#out` when the page came
/// over HTTPS and HTTP/2 (its static HTML says `not rendered`).
const RENDERED: &str = "<p id=\"out\">rendered https: h2</p>";

/// The test CA's nickname in the browser's NSS database.
const CA_NICKNAME: &str = "gannet-test-ca";

/// How long one browser run may take before its process group is killed.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// Whether an executable `program` is on PATH.
fn on_path(program: &str) -> bool {
    let Some(paths) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&paths).any(|dir| {
        dir.join(program)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether chromium and certutil are installed. Without them the test is
/// skipped, except under CI (`CI` set), which must have them.
fn browser_installed() -> bool {
    let missing: Vec<&str> = ["chromium", "certutil"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI must have {} on PATH for the browser test (Debian packages chromium and \
             libnss3-tools; .ci/run installs them)",
            missing.join(" and ")
        );
    }
    eprintln!(
        "skipped: {} not on PATH (apt-get install chromium libnss3-tools)",
        missing.join(" and ")
    );
    false
}

/// Runs certutil with `args` to its end; returns its stdout.
fn certutil(args: &[&str]) -> String {
    let out = Command::new("certutil")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running certutil: {e}"));
    assert!(
        out.status.success(),
        "certutil {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A home directory for the browser with its NSS database,
/// `$HOME/.pki/nssdb`, where Chromium on Linux looks for trusted CAs:
/// holding `ca` (a PEM file) as a trusted issuer of TLS server
/// certificates, or, with `None`, no CA at all.
fn browser_home(ca: Option<&Path>) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let nssdb = home.path().join(".pki").join("nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", arg(&nssdb));
    certutil(&["-N", "--empty-password", "-d", &db]);
    if let Some(ca) = ca {
        certutil(&[
            "-A",
            "-t",
            "C,,",
            "-n",
            CA_NICKNAME,
            "-i",
            arg(ca),
            "-d",
            &db,
        ]);
    }
    let listed = certutil(&["-L", "-d", &db]);
    assert_eq!(
        listed.contains(CA_NICKNAME),
        ca.is_some(),
        "the NSS database's certificates:\n{listed}"
    );
    home
}

/// Whether process `pid` has exited and awaits reaping (a zombie).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state …`; comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Sends SIGKILL to every process of process group `group`.
fn kill_group(group: u32) {
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    unsafe { libc::killpg(group as libc::pid_t, libc::SIGKILL) };
}

/// What one browser run came to.
struct Browsed {
    status: ExitStatus,
    /// The DOM after load (`--dump-dom`), empty when the page did not load.
    dom: String,
    /// Chromium's stderr.
    log: String,
}

impl Browsed {
    /// The end of the browser's log, without its D-Bus complaints (there is
    /// no bus in a test's environment), for failure messages.
    fn log_tail(&self) -> String {
        let lines: Vec<&str> = self.log.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Headless Chromium with `home` as HOME (so its NSS database is the one
/// there) and a fresh profile loads `url`, resolving `host` to loopback,
/// and prints the DOM after load. Its whole process group is killed if it
/// has not finished within [`BROWSER_LIMIT`].
// Every path after the spawn waits for the launcher (after killing its
// group); the lint does not follow the loop.
#[allow(clippy::zombie_processes)]
fn chromium_dump_dom(home: &Path, host: &str, url: &str) -> Browsed {
    let scratch = tempfile::tempdir().unwrap();
    let profile: PathBuf = scratch.path().join("profile");
    let dom_path = scratch.path().join("dom.html");
    let log_path = scratch.path().join("chromium.log");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", arg(&profile)))
        .arg(format!("--host-resolver-rules=MAP {host} 127.0.0.1"))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .stdout(File::create(&dom_path).unwrap())
        .stderr(File::create(&log_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting chromium: {e}"));
    // The browser's processes (zygotes, renderers, the GPU and network
    // services) share the group of the launcher, whose pid names it. The
    // launcher is reaped only after the group is killed, so the pid (and
    // the group's name) cannot have been reused by then.
    let group = child.id();
    let deadline = Instant::now() + BROWSER_LIMIT;
    let status = loop {
        if zombie(group) {
            // Anything it left running in its group goes too.
            kill_group(group);
            break child.wait().unwrap();
        }
        if Instant::now() >= deadline {
            kill_group(group);
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("chromium did not finish loading {url} within {BROWSER_LIMIT:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Browsed {
        status,
        dom: String::from_utf8_lossy(&std::fs::read(&dom_path).unwrap()).into_owned(),
        log: String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned(),
    }
}

/// The other tenant's site answers over plain HTTP.
async fn bystander_served(gw: &Gateway) {
    let r = Http::h1().get(gw.addr, "other.test", "/").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello, world\n"),
        "the other tenant's site"
    );
}

/// [`chromium_dump_dom`] on a blocking thread, the other tenant's site
/// asked over plain HTTP meanwhile (it must be served throughout).
async fn browse(gw: &Gateway, home: &Path, host: &str, url: &str) -> Browsed {
    let run = {
        let (home, host, url) = (home.to_path_buf(), host.to_string(), url.to_string());
        tokio::task::spawn_blocking(move || chromium_dump_dom(&home, &host, &url))
    };
    loop {
        bystander_served(gw).await;
        if run.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match run.await {
        Ok(browsed) => browsed,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_over_https_renders_in_chromium_trusting_the_test_ca() {
    if !browser_installed() {
        return;
    }
    let files = CertFiles::new(&leaf(&["page.test"]));
    let routes = [
        app("page", "page", &["page.test"], ""),
        app("site", "hello", &["other.test"], "tenant = \"other\""),
    ]
    .concat();
    let args = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        arg(&files.cert),
        "--tls-key",
        arg(&files.key),
    ];
    let gw = Gateway::start_with(&routes, &shared_cache(), &args);
    let tls = gw.tls.expect("the gateway announced no https listener");
    let url = format!("https://page.test:{}/", tls.port());

    // Trusting the test CA: the page loaded, its script ran, and what it
    // wrote says HTTPS and HTTP/2.
    let trusting = browser_home(Some(files.ca.as_path()));
    let b = browse(&gw, trusting.path(), "page.test", &url).await;
    assert!(
        b.status.success() && b.dom.contains(RENDERED) && !b.dom.contains("not rendered"),
        "chromium ({}) trusting the CA did not render {RENDERED:?} from {url}; DOM:\n{}\n\
         chromium's log:\n{}\ngateway's log:\n{}",
        b.status,
        b.dom,
        b.log_tail(),
        gw.log_text()
    );

    // The control: a browser whose NSS database lacks the CA refuses the
    // certificate, and nothing of the page renders.
    let untrusting = browser_home(None);
    let b = browse(&gw, untrusting.path(), "page.test", &url).await;
    assert!(
        !b.dom.contains("rendered"),
        "chromium without the CA rendered the page; DOM:\n{}",
        b.dom
    );
    assert!(
        b.log.contains("ERR_CERT_AUTHORITY_INVALID")
            || b.dom.contains("ERR_CERT_AUTHORITY_INVALID"),
        "chromium without the CA did not refuse the certificate as of an unknown issuer; DOM:\n{}\n\
         chromium's log:\n{}",
        b.dom,
        b.log_tail()
    );

    // And the other tenant is served after, too.
    bystander_served(&gw).await;
}
