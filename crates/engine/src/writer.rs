//! A folder's one writer: the opened [`Node`] behind a lock that lets
//! interactive callers (an agent's write, a command of the command line)
//! go before bulk work (sync batches, the watcher's rescans). Reads never
//! come here: they use read-only handles ([`crate::ReadPool`]).
//!
//! A sync session holds the node for one applied batch at a time and asks
//! again for the next, so an interactive caller waits for at most the batch
//! in progress. A rescan still holds it for the whole scan.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::node::Node;

/// How long bulk work lets interactive callers go first.
pub const BULK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// The node of one folder, for one writer at a time.
pub struct Writer {
    node: Mutex<Node>,
    turn: Mutex<Turn>,
    released: Condvar,
    /// Files waiting for whoever holds the writer next ([`Writer::write_file`]).
    queued: Mutex<Vec<QueuedWrite>>,
}

#[derive(Default)]
struct Turn {
    held: bool,
    interactive_waiting: usize,
}

/// A caller panicked while it held the node: its state is not trusted.
#[derive(Debug, thiserror::Error)]
#[error("the folder's writer failed earlier (a panic while it held the store)")]
pub struct Poisoned;

/// The node, held; the next caller gets it when this drops.
pub struct WriterGuard<'a> {
    node: Option<MutexGuard<'a, Node>>,
    writer: &'a Writer,
}

impl Deref for WriterGuard<'_> {
    type Target = Node;
    fn deref(&self) -> &Node {
        // Set from construction until drop.
        self.node.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Node {
        self.node.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        drop(self.node.take());
        self.writer.release();
    }
}

impl Writer {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Self {
        Writer {
            node: Mutex::new(node),
            turn: Mutex::new(Turn::default()),
            released: Condvar::new(),
            queued: Mutex::new(Vec::new()),
        }
    }

    fn turn(&self) -> MutexGuard<'_, Turn> {
        // `Turn` is two plain fields, consistent at every unlock.
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self) {
        self.turn().held = false;
        self.released.notify_all();
    }

    fn take(&self) -> Result<WriterGuard<'_>, Poisoned> {
        match self.node.lock() {
            Ok(g) => Ok(WriterGuard {
                node: Some(g),
                writer: self,
            }),
            Err(_) => {
                self.release();
                Err(Poisoned)
            }
        }
    }

    /// The node for an interactive call: it goes before bulk work that is
    /// waiting. Blocks; call it on a blocking thread.
    pub fn lock(&self) -> Result<WriterGuard<'_>, Poisoned> {
        let mut turn = self.turn();
        turn.interactive_waiting += 1;
        while turn.held {
            turn = self.released.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        turn.interactive_waiting -= 1;
        turn.held = true;
        drop(turn);
        self.take()
    }

    /// The node for one batch of bulk work: waits while it is held or an
    /// interactive caller waits, but after [`BULK_PATIENCE`] only while it
    /// is held, so a steady stream of interactive calls cannot stop sync.
    /// Blocks; call it on a blocking thread.
    pub fn lock_bulk(&self) -> Result<WriterGuard<'_>, Poisoned> {
        let since = std::time::Instant::now();
        let mut turn = self.turn();
        loop {
            let yielding = turn.interactive_waiting > 0 && since.elapsed() < BULK_PATIENCE;
            if !turn.held && !yielding {
                break;
            }
            turn = self
                .released
                .wait_timeout(turn, BULK_PATIENCE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        turn.held = true;
        drop(turn);
        self.take()
    }

    /// Writes a file as an interactive caller, sharing the commit with
    /// every other write queued meanwhile (group commit): the caller that
    /// gets the writer writes all the queued files and commits them once
    /// ([`Node::write_files`]); the others find their result waiting. Under
    /// concurrent agents, one pack sync and one transaction serve them all.
    pub fn write_file(
        &self,
        rel: &str,
        bytes: Vec<u8>,
        actor: Option<String>,
        expect: Option<u64>,
    ) -> crate::Result<crate::write_group::Written> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.queued_writes().push(QueuedWrite {
            rel: rel.to_owned(),
            bytes,
            actor,
            expect,
            done,
        });
        loop {
            if let Ok(r) = result.try_recv() {
                return r;
            }
            // Wait for the writer as an interactive caller, or for the
            // holder to have written this file with its own.
            {
                let mut turn = self.turn();
                turn.interactive_waiting += 1;
                while turn.held {
                    turn = self.released.wait(turn).unwrap_or_else(|e| e.into_inner());
                    if let Ok(r) = result.try_recv() {
                        turn.interactive_waiting -= 1;
                        return r;
                    }
                }
                turn.interactive_waiting -= 1;
                turn.held = true;
            }
            let mut node = self
                .take()
                .map_err(|e| crate::Error::SharedCommit(e.to_string()))?;
            let group = std::mem::take(&mut *self.queued_writes());
            if group.is_empty() {
                continue;
            }
            let writes: Vec<crate::write_group::FileWrite<'_>> = group
                .iter()
                .map(|q| crate::write_group::FileWrite {
                    rel: &q.rel,
                    bytes: &q.bytes,
                    actor: q.actor.as_deref(),
                    expect: q.expect,
                })
                .collect();
            let results = node.write_files(&writes);
            for (q, r) in group.iter().zip(results) {
                // The waiter may have gone (a cancelled call): its file
                // is written all the same.
                let _ = q.done.send(r);
            }
        }
    }

    fn queued_writes(&self) -> MutexGuard<'_, Vec<QueuedWrite>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a caller panicked while it held the node (a check that
    /// never waits, for readiness probes).
    pub fn is_poisoned(&self) -> bool {
        self.node.is_poisoned()
    }

    /// Interactive callers waiting now (for status and tests).
    pub fn interactive_waiting(&self) -> usize {
        self.turn().interactive_waiting
    }
}

/// A file waiting in [`Writer::write_file`]'s queue, with where its result goes.
struct QueuedWrite {
    rel: String,
    bytes: Vec<u8>,
    actor: Option<String>,
    expect: Option<u64>,
    done: std::sync::mpsc::SyncSender<crate::Result<crate::write_group::Written>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn writes_queued_meanwhile_are_written_by_whoever_gets_the_writer() {
        let (_dir, node) = crate::ops::tests::node();
        let root = node.root().to_owned();
        let w = Arc::new(Writer::new(node));
        let held = w.lock().unwrap();
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    w.write_file(
                        &format!("n{i}.txt"),
                        format!("note {i}").into_bytes(),
                        None,
                        None,
                    )
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.queued_writes().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.queued_writes().len(), 3);
        drop(held);
        for t in threads {
            let written = t.join().unwrap().unwrap();
            assert!(written.created);
            assert_eq!(written.record.label, 1);
        }
        for i in 0..3 {
            assert_eq!(
                std::fs::read_to_string(root.join(format!("n{i}.txt"))).unwrap(),
                format!("note {i}")
            );
        }
        assert!(w.queued_writes().is_empty());
    }

    #[test]
    fn interactive_callers_go_before_waiting_bulk_work() {
        let (_dir, node) = crate::ops::tests::node();
        let w = Arc::new(Writer::new(node));
        let order = Arc::new(Mutex::new(Vec::new()));
        // A batch in progress holds the node.
        let batch = w.lock_bulk().unwrap();
        let mut threads = Vec::new();
        for i in 0..3 {
            let (w, order) = (w.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _n = w.lock_bulk().unwrap();
                order.lock().unwrap().push(format!("bulk{i}"));
                std::thread::sleep(Duration::from_millis(5));
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
        let (w2, order2) = (w.clone(), order.clone());
        let interactive = std::thread::spawn(move || {
            let t = Instant::now();
            let _n = w2.lock().unwrap();
            order2.lock().unwrap().push("interactive".to_string());
            t.elapsed()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.interactive_waiting() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(batch);
        let waited = interactive.join().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], "interactive", "{order:?}");
        assert_eq!(order.len(), 4);
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
