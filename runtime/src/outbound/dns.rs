//! Name resolution for outbound requests, bounded for the whole process.
//!
//! `getaddrinfo` blocks, so each lookup takes a thread of tokio's blocking
//! pool, and an abandoned lookup keeps its thread until the resolver gives
//! up. At most [`MAX_CONCURRENT_LOOKUPS`] run at once: the slot is held by
//! the blocking task itself, so lookups that timed out still count until
//! they end. A lookup that cannot get a slot, or get an answer, before its
//! deadline fails.

use super::refusals::{self, Refusal};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use wasmtime_wasi_http::Error;

/// Most DNS lookups running at once in the process.
pub const MAX_CONCURRENT_LOOKUPS: usize = 64;

static LOOKUP_SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS)));

/// Resolves `host` to socket addresses with `port`, by `deadline`, using
/// the process's lookup slots.
pub(crate) async fn lookup(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, Error> {
    lookup_with(&LOOKUP_SLOTS, host, port, deadline).await
}

async fn lookup_with(
    slots: &Arc<Semaphore>,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, Error> {
    let slot = match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_closed)) => return Err(Error::InternalError(Some("DNS slots closed".into()))),
        Err(_elapsed) => {
            refusals::count(Refusal::DnsBusy);
            return Err(Error::DnsTimeout);
        }
    };
    let name = host.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        (name.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(Ok(addrs))) => Ok(addrs),
        Ok(Ok(Err(e))) => {
            tracing::debug!(%host, error = %e, "outbound DNS lookup failed");
            Err(Error::DnsError {
                rcode: Some("lookup failed".into()),
                info_code: None,
            })
        }
        Ok(Err(_join)) => Err(Error::InternalError(Some("DNS lookup task failed".into()))),
        Err(_elapsed) => {
            refusals::count(Refusal::Timeout);
            Err(Error::DnsTimeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_lookup_waiting_for_a_slot_past_its_deadline_fails() {
        let slots = Arc::new(Semaphore::new(0));
        let deadline = Instant::now() + Duration::from_millis(50);
        let result = lookup_with(&slots, "localhost", 80, deadline).await;
        assert!(matches!(result, Err(Error::DnsTimeout)), "{result:?}");
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_lookup_ends() {
        let slots = Arc::new(Semaphore::new(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        let addrs = lookup_with(&slots, "localhost", 80, deadline).await;
        assert!(addrs.is_ok(), "{addrs:?}");
        assert_eq!(slots.available_permits(), 1);
    }
}
