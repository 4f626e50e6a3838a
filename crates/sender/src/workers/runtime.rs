//! The background runtime: a second tokio runtime for the work no client waits on (dispatchers,
//! completion, retention, webhooks), whose threads run at a lower CPU priority.
//!
//! Why: a 500,000-item request must be answered in a couple of seconds while earlier jobs are fanned
//! out (#17). On one runtime, the dispatchers' encoding and SQS calls share the worker threads with
//! the request path, and the kernel cannot tell them apart. On their own threads, each lowered to
//! `DISPATCH_NICE` when it starts (Linux only: `setpriority(PRIO_PROCESS, <thread id>)`, which sets
//! one thread's nice value there), the kernel gives the request path the CPU first, and the
//! background takes what is left. The background also has its own MySQL pool, SQS client and Redis
//! connection, created on this runtime (their I/O is driven by its threads), so dispatch never
//! takes a connection a request is waiting for.
//!
//! Shutdown: dropping a tokio runtime from async code panics, so [`Drop`] uses
//! `shutdown_background`, which returns at once; the tasks have had their grace by then
//! (`Application::run_until_stopped` waits for them first).

use std::io;

use tokio::runtime::{Handle, Runtime};

/// Name of the background runtime's threads (`/proc/<pid>/task/<tid>/comm`, at most 15 bytes).
pub const THREAD_NAME: &str = "accrual-bg";

/// The runtime; shut down (without waiting) when dropped.
#[derive(Debug)]
pub struct BackgroundRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl BackgroundRuntime {
    /// Starts `threads` worker threads (and blocking threads as needed), each of which lowers its
    /// own priority to `nice` (0–19) when it starts.
    pub fn start(threads: usize, nice: i32) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(THREAD_NAME)
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Where background tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the calling thread's nice value to `nice`, or leaves it if it is lower already (a thread
/// never raises its own priority: that would need privileges, and an operator who started the
/// whole sender with `nice` meant it).
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    let tid = rustix::thread::gettid();
    let current = getpriority_process(Some(tid)).unwrap_or(0);
    if current >= nice {
        return;
    }
    if let Err(e) = setpriority_process(Some(tid), nice) {
        tracing::warn!(error = %e, nice, "Failed to lower a background thread's priority; it runs at the sender's");
    }
}

/// Elsewhere the threads keep the sender's priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}
