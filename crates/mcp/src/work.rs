//! Long tool calls: progress notifications and cancellation.
//!
//! A tool that may run long does its work through [`Work`]: it checks
//! [`Work::check`] between steps (a client's `notifications/cancelled`, or a
//! closed stateless HTTP request, cancels the request's token) and reports
//! [`Work::progress`], which becomes `notifications/progress` when the
//! request carried `_meta.progressToken`. The work runs on a blocking thread
//! with the node locked; progress crosses to the async side through a
//! channel, and every notification is sent before the tool's result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The message a cancelled tool call ends with (the client never sees it:
/// rmcp drops the response of a cancelled request; the audit log does).
pub(crate) const CANCELLED: &str = "cancelled by the client";

/// One progress step: progress, total, message.
type Step = (f64, Option<f64>, String);

/// Cancellation and progress of one tool call, usable on a blocking thread.
#[derive(Clone)]
pub(crate) struct Work {
    ct: CancellationToken,
    tx: Option<mpsc::UnboundedSender<Step>>,
    /// Last reported progress, as f64 bits (reports are thinned to 2 % steps).
    last: Arc<AtomicU64>,
    started: Instant,
}

impl Work {
    /// Work that is never cancelled and reports nothing.
    pub(crate) fn none() -> Self {
        Work {
            ct: CancellationToken::new(),
            tx: None,
            last: Arc::new(AtomicU64::new(f64::NEG_INFINITY.to_bits())),
            started: Instant::now(),
        }
    }

    /// The same cancellation, without progress reports.
    pub(crate) fn silent(&self) -> Self {
        Work {
            tx: None,
            ..self.clone()
        }
    }

    /// Whether the client cancelled the call.
    pub(crate) fn cancelled(&self) -> bool {
        self.ct.is_cancelled()
    }

    /// `Err(CANCELLED)` once the client cancelled the call.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.cancelled() {
            Err(CANCELLED.to_string())
        } else {
            Ok(())
        }
    }

    /// Reports `done` of `total` (same unit). Reports are sent at the start,
    /// at the end and every 2 % in between; `message` is built only then.
    pub(crate) fn progress(&self, done: f64, total: Option<f64>, message: impl FnOnce() -> String) {
        let Some(tx) = &self.tx else {
            return;
        };
        let last = f64::from_bits(self.last.load(Ordering::Relaxed));
        let due = match total {
            Some(t) if t > 0.0 => done >= t || done == 0.0 || (done - last) / t >= 0.02,
            // Without a total: at most one report per 100 ms.
            _ => last < 0.0 || self.started.elapsed().as_millis() as f64 / 100.0 > last,
        };
        if !due || done < last {
            return;
        }
        let mark = match total {
            Some(t) if t > 0.0 => done,
            _ => self.started.elapsed().as_millis() as f64 / 100.0,
        };
        self.last.store(mark.to_bits(), Ordering::Relaxed);
        let _ = tx.send((done, total, message()));
    }
}

/// Starts the progress forwarder of one request: a [`Work`] for the
/// blocking side, and the task sending its reports to the client (await it
/// after the work, so the reports precede the result).
pub(crate) fn start(
    ctx: &RequestContext<RoleServer>,
) -> (Work, Option<tokio::task::JoinHandle<()>>) {
    let mut work = Work::none();
    work.ct = ctx.ct.clone();
    let Some(token) = ctx.meta.get_progress_token() else {
        return (work, None);
    };
    let (tx, rx) = mpsc::unbounded_channel();
    work.tx = Some(tx);
    let task = tokio::spawn(forward(ctx.peer.clone(), token, rx));
    (work, Some(task))
}

async fn forward(
    peer: Peer<RoleServer>,
    token: ProgressToken,
    mut rx: mpsc::UnboundedReceiver<Step>,
) {
    while let Some((done, total, message)) = rx.recv().await {
        let mut p = ProgressNotificationParam::new(token.clone(), done).with_message(message);
        if let Some(t) = total {
            p = p.with_total(t);
        }
        if let Err(e) = peer.notify_progress(p).await {
            tracing::debug!("progress notification not sent: {e}");
            // Drain so the worker never blocks; nothing more is sent.
            while rx.recv().await.is_some() {}
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_thinned_to_two_percent_steps() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = Work::none();
        w.tx = Some(tx);
        for i in 0..=1000 {
            w.progress(i as f64, Some(1000.0), || format!("{i}"));
        }
        let mut n = 0;
        let mut last = None;
        while let Ok((done, total, _)) = rx.try_recv() {
            assert_eq!(total, Some(1000.0));
            n += 1;
            last = Some(done);
        }
        assert!((50..=52).contains(&n), "{n} reports");
        assert_eq!(last, Some(1000.0));
        assert!(w.check().is_ok());
        w.ct.cancel();
        assert_eq!(w.check(), Err(CANCELLED.to_string()));
    }
}
