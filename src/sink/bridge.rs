//! The tokio bridge: the scylla driver only runs on tokio, shards run on glommio.
//!
//! Each shard owns one tokio current-thread runtime on a helper thread (pinned by config). The helper
//! only drives tokio's I/O driver and timers (`block_on` of a shutdown signal). The driver's futures
//! themselves are polled by the shard, inside [`InTokio`], which enters the runtime context on every
//! poll so that the driver finds its reactor; wake-ups come back from the helper thread, which glommio
//! accepts. No tokio task is spawned per request (that costs 10-15x, measured).
//!
//! Precondition: create tokio resources (the Session, sockets, timers) inside an [`InTokio`] future,
//! never outside one: outside, there is no runtime context and tokio panics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pin_project! {
    /// A future polled by a glommio shard with the bridge's tokio context entered.
    pub struct InTokio<F> {
        handle: Handle,
        #[pin]
        fut: F,
    }
}

impl<F> InTokio<F> {
    /// Wraps `fut` to be polled inside `handle`'s context.
    pub fn new(handle: Handle, fut: F) -> Self {
        InTokio { handle, fut }
    }
}

impl<F: Future> Future for InTokio<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.handle.enter();
        this.fut.poll(cx)
    }
}

/// A shard's tokio runtime on its helper thread. Dropping it stops the runtime and joins the thread.
pub struct TokioBridge {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokioBridge {
    /// Starts the helper thread, pinned to `core` when given.
    pub fn start(name: String, core: Option<usize>) -> std::io::Result<TokioBridge> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(id) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(rt.handle().clone()));
            // Drives I/O and timers until the bridge is dropped; a dropped sender also ends it.
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("tokio bridge thread exited before starting"))??;
        Ok(TokioBridge {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Wraps a future so that it runs with this bridge's context.
    pub fn wrap<F: Future>(&self, fut: F) -> InTokio<F> {
        InTokio {
            handle: self.handle.clone(),
            fut,
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for TokioBridge {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokio_timers_complete_when_polled_from_glommio() {
        let bridge = TokioBridge::start("bridge-test".into(), None).expect("bridge starts");
        let handle = bridge.handle().clone();
        let out = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let h = handle.clone();
                InTokio {
                    handle: h,
                    fut: async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        l.local_addr()
                    },
                }
                .await
            })
            .expect("executor starts")
            .join()
            .expect("executor thread joins");
        assert!(out.expect("tokio resources work inside InTokio").port() > 0);
    }
}
