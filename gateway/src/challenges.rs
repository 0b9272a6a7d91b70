//! ACME HTTP-01 challenge answers (and hostnames' ownership tokens, at
//! `/.well-known/gannet-challenge/`): (hostname, token) → key authorization,
//! an immutable [`ChallengeTable`] behind an atomic pointer
//! ([`Challenges`], the routing table's pattern), replaced whole when a
//! revision is applied. Independent of routing: a hostname being validated
//! is usually not one of its app's `hosts` yet, and an app whose component
//! could not be taken still has its challenges answered.
//!
//! Entries are checked when the table is built (token `[A-Za-z0-9_-]`,
//! 1..=256 characters; key authorization printable ASCII, 1..=1024 bytes;
//! hostname at most 253 bytes of `[a-z0-9._-]`); an invalid one is dropped
//! with a warning naming its app, never its token or key authorization.

use bytes::Bytes;
use gannet_model::snapshot::AcmeChallenge;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Where ACME HTTP-01 challenges are asked for (RFC 8555 §8.3).
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";
/// Where the control API asks for a hostname's ownership token (the same
/// table: a token is public, and answers only for its hostname).
pub const OWNERSHIP_CHALLENGE: &str = "/.well-known/gannet-challenge/";
/// What both paths start with: the one check every other request pays.
pub const WELL_KNOWN: &str = "/.well-known/";

const MAX_HOSTNAME: usize = 253;
const MAX_TOKEN: usize = 256;
const MAX_KEY_AUTHORIZATION: usize = 1024;

/// The challenges in service: hostname → token → key authorization.
#[derive(Default)]
pub struct ChallengeTable {
    hosts: HashMap<Box<str>, HashMap<Box<str>, Bytes>>,
    len: usize,
}

impl ChallengeTable {
    /// Builds a table from `(app key, its challenges)` pairs. Invalid
    /// entries are dropped with a warning; when several apps claim one
    /// (hostname, token), the app whose key sorts first keeps it (within
    /// one app, its first entry), whatever the order given.
    pub fn build<'a>(apps: impl IntoIterator<Item = (&'a str, &'a [AcmeChallenge])>) -> Self {
        let mut entries: HashMap<(String, &'a str), (&'a str, &'a str)> = HashMap::new();
        for (app, challenges) in apps {
            for challenge in challenges {
                let hostname = match check(challenge) {
                    Ok(hostname) => hostname,
                    Err(reason) => {
                        tracing::warn!(app, reason, "ACME challenge dropped");
                        continue;
                    }
                };
                let value = (app, challenge.key_authorization.as_str());
                match entries.entry((hostname, challenge.token.as_str())) {
                    Entry::Vacant(v) => {
                        v.insert(value);
                    }
                    Entry::Occupied(mut o) => {
                        let (kept, dropped) = if app < o.get().0 {
                            (app, o.insert(value).0)
                        } else {
                            (o.get().0, app)
                        };
                        tracing::warn!(
                            hostname = %o.key().0,
                            kept,
                            dropped,
                            "ACME challenge claimed twice; one kept"
                        );
                    }
                }
            }
        }
        let mut table = ChallengeTable {
            hosts: HashMap::new(),
            len: entries.len(),
        };
        for ((hostname, token), (_, key_authorization)) in entries {
            table
                .hosts
                .entry(hostname.into_boxed_str())
                .or_default()
                .insert(
                    token.into(),
                    Bytes::copy_from_slice(key_authorization.as_bytes()),
                );
        }
        table
    }

    /// The key authorization for `token` at `host` (lowercase, no port,
    /// no trailing dot, as [`crate::router::request_host`] gives it).
    pub fn lookup(&self, host: &str, token: &str) -> Option<&Bytes> {
        self.hosts.get(host)?.get(token)
    }

    /// How many challenges the table answers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it answers none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key authorization answering `req`, if it is a GET or HEAD of
    /// `/.well-known/acme-challenge/<token>` for a (host, token) in the
    /// table. The host is the request's (`:port` and a trailing dot
    /// stripped, lowercased).
    pub fn answer<B>(&self, req: &http::Request<B>) -> Option<Bytes> {
        let path = req.uri().path();
        let token = path
            .strip_prefix(ACME_CHALLENGE)
            .or_else(|| path.strip_prefix(OWNERSHIP_CHALLENGE))?;
        if token.is_empty() || token.contains('/') {
            return None;
        }
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return None;
        }
        let host = crate::router::request_host(req)?;
        self.lookup(&host, token).cloned()
    }
}

/// The challenge table in service, swapped whole (no lock on lookups).
pub struct Challenges {
    table: ArcSwap<ChallengeTable>,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges::new()
    }
}

impl Challenges {
    /// An empty store: no challenge answered.
    pub fn new() -> Self {
        Challenges {
            table: ArcSwap::from_pointee(ChallengeTable::default()),
        }
    }

    /// The table in service now.
    pub fn load(&self) -> Arc<ChallengeTable> {
        self.table.load_full()
    }

    /// Serves `table` from now on, in place of the previous one. Returns
    /// how many challenges it answers.
    pub fn replace(&self, table: ChallengeTable) -> usize {
        let len = table.len();
        self.table.store(Arc::new(table));
        len
    }

    /// The key authorization answering `req` (see [`ChallengeTable::answer`]).
    pub fn answer<B>(&self, req: &http::Request<B>) -> Option<Bytes> {
        self.table.load().answer(req)
    }
}

/// `challenge`'s hostname as the table keys it (lowercase, no trailing
/// dot), or why the entry is refused.
fn check(challenge: &AcmeChallenge) -> Result<String, &'static str> {
    let token = challenge.token.as_bytes();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err("token length is not 1..=256");
    }
    if !token
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return Err("token has characters outside [A-Za-z0-9_-]");
    }
    let key_authorization = challenge.key_authorization.as_bytes();
    if key_authorization.is_empty() || key_authorization.len() > MAX_KEY_AUTHORIZATION {
        return Err("key authorization length is not 1..=1024 bytes");
    }
    if !key_authorization.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err("key authorization is not printable ASCII");
    }
    let raw = challenge.hostname.as_str();
    let hostname = raw.strip_suffix('.').unwrap_or(raw);
    if hostname.is_empty() || hostname.len() > MAX_HOSTNAME {
        return Err("hostname length is not 1..=253 bytes");
    }
    if !hostname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("hostname has characters outside [A-Za-z0-9._-]");
    }
    Ok(hostname.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(hostname: &str, token: &str, key_authorization: &str) -> AcmeChallenge {
        AcmeChallenge {
            hostname: hostname.into(),
            token: token.into(),
            key_authorization: key_authorization.into(),
        }
    }

    fn get(host: &str, path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .header(http::header::HOST, host)
            .body(())
            .unwrap()
    }

    const PATH: &str = "/.well-known/acme-challenge/tok_EN-1";

    #[test]
    fn answers_by_host_whatever_its_case_port_or_trailing_dot() {
        let apps = [challenge("Shop.Example.com.", "tok_EN-1", "tok_EN-1.thumb")];
        let table = ChallengeTable::build([("acme/shop", &apps[..])]);
        assert_eq!(table.len(), 1);
        let want = Some(Bytes::from_static(b"tok_EN-1.thumb"));
        for host in [
            "shop.example.com",
            "SHOP.example.COM",
            "shop.example.com.",
            "shop.example.com:80",
            "Shop.Example.Com.:5002",
        ] {
            assert_eq!(table.answer(&get(host, PATH)), want, "{host}");
        }
        // HTTP/2 (or absolute-form): the authority is the host.
        let h2 = http::Request::builder()
            .uri("http://shop.example.com:80/.well-known/acme-challenge/tok_EN-1")
            .body(())
            .unwrap();
        assert_eq!(table.answer(&h2), want);
        let head = http::Request::builder()
            .method(http::Method::HEAD)
            .uri(PATH)
            .header(http::header::HOST, "shop.example.com")
            .body(())
            .unwrap();
        assert_eq!(table.answer(&head), want);
        assert_eq!(
            table.lookup("shop.example.com", "tok_EN-1").map(|b| &b[..]),
            Some(&b"tok_EN-1.thumb"[..])
        );
    }

    #[test]
    fn unknown_tokens_hosts_paths_and_methods_get_none() {
        let apps = [challenge("shop.example.com", "tok", "tok.thumb")];
        let table = ChallengeTable::build([("acme/shop", &apps[..])]);
        let prefix = ACME_CHALLENGE;
        assert!(
            table
                .answer(&get("shop.example.com", &format!("{prefix}tok")))
                .is_some()
        );
        for path in [
            format!("{prefix}other"),
            format!("{prefix}TOK"),
            format!("{prefix}tok/"),
            format!("{prefix}tok/more"),
            format!("{prefix}x/tok"),
            prefix.to_string(),
            "/tok".to_string(),
            "/.well-known/acme-challenge".to_string(),
        ] {
            assert!(
                table.answer(&get("shop.example.com", &path)).is_none(),
                "{path}"
            );
        }
        // The query is not part of the token.
        assert!(
            table
                .answer(&get("shop.example.com", &format!("{prefix}tok?x=1")))
                .is_some()
        );
        assert!(
            table
                .answer(&get("blog.example.com", &format!("{prefix}tok")))
                .is_none()
        );
        assert!(table.lookup("blog.example.com", "tok").is_none());
        assert!(table.lookup("shop.example.com", "nope").is_none());
        let post = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{prefix}tok"))
            .header(http::header::HOST, "shop.example.com")
            .body(())
            .unwrap();
        assert!(table.answer(&post).is_none());
        let no_host = http::Request::builder()
            .uri(format!("{prefix}tok"))
            .body(())
            .unwrap();
        assert!(table.answer(&no_host).is_none());
    }

    #[test]
    fn invalid_entries_are_dropped_and_valid_ones_kept() {
        let long_token = "a".repeat(MAX_TOKEN + 1);
        let max_token = "b".repeat(MAX_TOKEN);
        let long_auth = "k".repeat(MAX_KEY_AUTHORIZATION + 1);
        let long_host = format!("{}.test", "h".repeat(MAX_HOSTNAME));
        let apps = [
            challenge("a.test", "", "x"),
            challenge("a.test", &long_token, "x"),
            challenge("a.test", "bad/token", "x"),
            challenge("a.test", "bad.token", "x"),
            challenge("a.test", "bad%20", "x"),
            challenge("a.test", "tok1", ""),
            challenge("a.test", "tok2", &long_auth),
            challenge("a.test", "tok3", "bad\nauth"),
            challenge("a.test", "tok4", "bad\u{e9}auth"),
            challenge(&long_host, "tok5", "x"),
            challenge("", "tok6", "x"),
            challenge("bad host.test", "tok7", "x"),
            challenge("*.a.test", "tok8", "x"),
            challenge("a.test", &max_token, "ok"),
            challenge("a.test", "good_TOKEN-9", "good_TOKEN-9.thumb"),
        ];
        let table = ChallengeTable::build([("acme/shop", &apps[..])]);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup("a.test", &max_token).map(|b| &b[..]),
            Some(&b"ok"[..])
        );
        assert!(table.lookup("a.test", "good_TOKEN-9").is_some());
        for token in [
            "",
            "bad/token",
            "bad.token",
            "bad%20",
            "tok1",
            "tok2",
            "tok3",
            "tok4",
        ] {
            assert!(table.lookup("a.test", token).is_none(), "{token}");
        }
        assert!(table.lookup(&long_host, "tok5").is_none());
        assert!(table.lookup("bad host.test", "tok7").is_none());
        assert!(table.lookup("*.a.test", "tok8").is_none());
    }

    #[test]
    fn a_claim_made_twice_is_kept_for_the_first_app_key_whatever_the_order() {
        let a = [challenge("x.test", "tok", "from-a")];
        let b = [challenge("X.test.", "tok", "from-b")];
        let c = [challenge("x.test", "tok", "from-c")];
        for order in [
            vec![("t/a", &a[..]), ("t/b", &b[..]), ("t/c", &c[..])],
            vec![("t/c", &c[..]), ("t/b", &b[..]), ("t/a", &a[..])],
            vec![("t/b", &b[..]), ("t/a", &a[..]), ("t/c", &c[..])],
        ] {
            let table = ChallengeTable::build(order);
            assert_eq!(table.len(), 1);
            assert_eq!(
                table.lookup("x.test", "tok").map(|b| &b[..]),
                Some(&b"from-a"[..])
            );
        }
    }

    #[test]
    fn the_store_serves_the_table_last_given() {
        let store = Challenges::new();
        let req = get("x.test", "/.well-known/acme-challenge/tok");
        assert!(store.answer(&req).is_none());
        let apps = [challenge("x.test", "tok", "tok.thumb")];
        assert_eq!(
            store.replace(ChallengeTable::build([("t/a", &apps[..])])),
            1
        );
        assert_eq!(store.answer(&req), Some(Bytes::from_static(b"tok.thumb")));
        assert_eq!(store.replace(ChallengeTable::default()), 0);
        assert!(store.answer(&req).is_none());
        assert!(store.load().is_empty());
    }
}
