//! The node's long-running tasks under one owner. Each runs until the node
//! stops; one that ends early or panics is a failure that stops the node
//! (with its name and cause) instead of leaving it half alive, say without
//! its control socket. Stopping cancels every task and waits for them.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long stopping waits for the tasks to notice their cancellation.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The tasks of a running node.
pub(crate) struct Supervisor {
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    cancel: CancellationToken,
}

impl Supervisor {
    pub(crate) fn new() -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Runs `task` (named for logs and errors) until it ends or the node stops.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                r = task => (name, r),
                _ = cancel.cancelled() => (name, Ok(())),
            }
        });
    }

    /// Waits for `stop` (a signal, a stop request) or for a task to end,
    /// which is an error: tasks run as long as the node.
    pub(crate) async fn run_until(
        &mut self,
        stop: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = stop => r,
            done = self.tasks.join_next() => match done {
                None => Ok(()),
                Some(Ok((name, Ok(())))) => Err(anyhow!("the node's {name} task stopped")),
                Some(Ok((name, Err(e)))) => Err(e.context(format!("the node's {name} task failed"))),
                Some(Err(e)) => Err(anyhow!("a task of the node panicked: {e}")),
            },
        }
    }

    /// Cancels every task and waits for them (at most [`STOP_WAIT`]).
    pub(crate) async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(STOP_WAIT, async {
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok((name, Err(e))) => tracing::warn!("{name}: {e:#}"),
                    Err(e) if e.is_panic() => tracing::warn!("a task panicked: {e}"),
                    _ => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("tasks still running after {STOP_WAIT:?}: aborted");
            self.tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_fails_stops_the_node_with_its_name() {
        let mut s = Supervisor::new();
        s.spawn("forever", std::future::pending());
        s.spawn("broken", async { Err(anyhow!("disk on fire")) });
        let e = s.run_until(std::future::pending()).await.unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("broken") && text.contains("disk on fire"),
            "{text}"
        );
        s.shutdown().await;
    }

    #[tokio::test]
    async fn stop_cancels_every_task() {
        let mut s = Supervisor::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        s.spawn("holder", async move {
            let _keep = tx;
            std::future::pending::<()>().await;
            Ok(())
        });
        s.run_until(async { Ok(()) }).await.unwrap();
        s.shutdown().await;
        // The task was dropped: its sender with it.
        assert!(rx.await.is_err());
    }
}
