//! The guest runtime: guests run on worker threads of their own, apart from
//! the threads that accept connections and move bytes, so a storm of
//! spinning guests never stands between a client and its connection task.
//! Which guest runs on those threads is the fair scheduler's call
//! ([`gannet_runtime::fair::cpu`]): it hands out one CPU turn per thread.

use std::future::Future;
use tokio::runtime::{Builder, Handle, Runtime};

/// A multi-threaded tokio runtime for guest tasks, shut down (without
/// waiting) when dropped.
pub struct GuestRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
    threads: usize,
}

impl GuestRuntime {
    /// Starts `threads` guest worker threads (at least one), each at `nice`
    /// above the process's priority, so that under contention the kernel
    /// runs connection threads first.
    pub fn start(threads: usize, nice: i32) -> std::io::Result<GuestRuntime> {
        let threads = threads.max(1);
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gannet-guest")
            // New guests arrive from the connection threads, in the global
            // queue: look there before every task, not every 61st, or a new
            // request waits behind dozens of turns of running guests.
            .global_queue_interval(1)
            .enable_all()
            .on_thread_start(move || lower_priority(nice))
            .build()?;
        Ok(GuestRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            threads,
        })
    }

    /// Worker threads (and so CPU turns).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Spawns a guest task.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority by `nice` (Linux: per thread).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid, getpriority and setpriority take and return plain
    // integers; on Linux a nice value belongs to a thread, named by its id.
    let result = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, current.saturating_add(nice))
    };
    if result != 0 {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "could not lower the guest threads' priority"
        );
    }
}
