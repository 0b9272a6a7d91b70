//! Fault injection for tests: named points in the write paths where a test
//! can pause a request (to force an interleaving between replicas) or where
//! the process aborts (to show that a crash there loses nothing).
//!
//! Nothing is injected unless a test asks: [`Faults::default`] does nothing,
//! and `gannet-control-api` arms a point only when `GANNET_TEST_FAULT` is set
//! (`abort:<point>` aborts the first time the point is reached,
//! `abort:<point>:<n>` the n-th time).

use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A point in a write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Inside a transaction that changes what gateways serve: the change is
    /// written, its feed row not yet.
    ChangeWritten,
    /// Inside the same transaction: the feed row is written (its revision
    /// taken), the transaction not yet committed.
    FeedWritten,
    /// An upload's blob is stored (or was already); its version is not yet
    /// created.
    UploadStored,
}

impl FaultPoint {
    /// The point's name in `GANNET_TEST_FAULT`.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::ChangeWritten => "change-written",
            FaultPoint::FeedWritten => "feed-written",
            FaultPoint::UploadStored => "upload-stored",
        }
    }

    fn parse(name: &str) -> Option<FaultPoint> {
        [
            FaultPoint::ChangeWritten,
            FaultPoint::FeedWritten,
            FaultPoint::UploadStored,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// What a test runs at a point (it may wait, to hold a transaction open).
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> BoxFuture<'static, ()> + Send + Sync>;

/// The armed fault points of one process (none by default).
#[derive(Clone, Default)]
pub struct Faults {
    hook: Option<FaultHook>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("armed", &self.hook.is_some())
            .finish()
    }
}

impl Faults {
    /// Runs `hook` at every point (tests in the same process).
    pub fn with_hook(hook: FaultHook) -> Faults {
        Faults { hook: Some(hook) }
    }

    /// From `GANNET_TEST_FAULT=abort:<point>[:<n>]`: aborts the process the
    /// n-th time (default first) `point` is reached. Unset: nothing.
    pub fn from_env() -> Result<Faults, String> {
        let Ok(spec) = std::env::var("GANNET_TEST_FAULT") else {
            return Ok(Faults::default());
        };
        let mut parts = spec.split(':');
        let (Some("abort"), Some(point)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "GANNET_TEST_FAULT `{spec}`: expected abort:<point>[:<n>]"
            ));
        };
        let point = FaultPoint::parse(point)
            .ok_or_else(|| format!("GANNET_TEST_FAULT: unknown point `{point}`"))?;
        let nth: u64 = match parts.next() {
            Some(n) => n
                .parse()
                .map_err(|_| format!("GANNET_TEST_FAULT: `{n}` is not a count"))?,
            None => 1,
        };
        let seen = Arc::new(AtomicU64::new(0));
        Ok(Faults::with_hook(Arc::new(move |at| {
            if at == point && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                tracing::error!(point = point.name(), "GANNET_TEST_FAULT: aborting");
                std::process::abort();
            }
            Box::pin(async {})
        })))
    }

    /// Reached `point`.
    pub async fn at(&self, point: FaultPoint) {
        if let Some(hook) = &self.hook {
            hook(point).await;
        }
    }
}
