//! A session's control stream, and the folder's seal epochs on it
//! (`sovryn_store::epochs`): before any message that may name chunks
//! sealed under an epoch the peer has not been sent, the epochs go first,
//! so a member never receives a record it cannot open. Only sessions,
//! which exist with members that proved the folder key and are on the
//! device list, carry them; a revoked device is refused before this.

use super::*;
use sovryn_store::epochs::{EpochSecret, MAX_EPOCHS};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The sending half of a session's control stream, shared by the index
/// sender, the device-list sender and the acknowledgements of the receiver.
pub(crate) struct Control {
    stream: tokio::sync::Mutex<iroh::endpoint::SendStream>,
    /// The folder's codec, whose epochs only grow.
    codec: ChunkCodec,
    /// Whether the peer understands `Seals` messages.
    hears_seals: bool,
    /// How many epochs the peer has been sent.
    seals_sent: AtomicUsize,
    /// Raised when the device sender has sent the epochs.
    seals_flushed: tokio::sync::Notify,
}

/// How long a message that would carry new epochs waits for the device
/// list to carry them first.
const DEVICES_FIRST: Duration = Duration::from_secs(3);

impl Control {
    /// Wraps a session's control stream.
    pub(crate) fn new(
        stream: iroh::endpoint::SendStream,
        codec: ChunkCodec,
        hears_seals: bool,
    ) -> Self {
        Control {
            stream: tokio::sync::Mutex::new(stream),
            codec,
            hears_seals,
            seals_sent: AtomicUsize::new(0),
            seals_flushed: tokio::sync::Notify::new(),
        }
    }

    /// Sends `msg`, after the seal epochs when any is new to the peer. New
    /// epochs go out with the device list first (see
    /// [`Control::send_devices`]): this waits for that, briefly, and sends
    /// them itself only if the list does not come.
    pub(crate) async fn send(&self, msg: &Msg) -> Result<()> {
        let deadline = tokio::time::Instant::now() + DEVICES_FIRST;
        loop {
            let flushed = self.seals_flushed.notified();
            if !self.behind() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, flushed).await;
        }
        let mut stream = self.stream.lock().await;
        self.seals_if_new(&mut stream).await?;
        wire::write_msg(&mut *stream, msg).await
    }

    /// Whether epochs exist that the peer has not been sent.
    fn behind(&self) -> bool {
        self.hears_seals && self.codec.epoch_count() > self.seals_sent.load(Ordering::Acquire)
    }

    /// Sends the device list, then the seal epochs when any is new to the
    /// peer: a member learns of a revocation (and stops talking to the
    /// revoked device) before it holds the epoch that the revocation
    /// started, so it never passes that epoch on to the revoked device.
    /// Every new epoch is followed by a new device list (a revocation
    /// rotates, then the sessions send the list; merged epochs do too).
    pub(crate) async fn send_devices(&self, msg: &Msg) -> Result<()> {
        let mut stream = self.stream.lock().await;
        wire::write_msg(&mut *stream, msg).await?;
        self.seals_if_new(&mut stream).await?;
        self.seals_flushed.notify_waiters();
        Ok(())
    }

    async fn seals_if_new(&self, stream: &mut iroh::endpoint::SendStream) -> Result<()> {
        // Counted under the lock, so epochs sent in between are not missed
        // and the count read is at least what sealed any chunk a message
        // sent after names.
        let known = self.codec.epoch_count();
        if self.hears_seals && known > self.seals_sent.load(Ordering::Acquire) {
            let epochs = self.codec.epochs();
            wire::write_msg(stream, &Msg::Seals { epochs }).await?;
            self.seals_sent.store(known, Ordering::Release);
        }
        Ok(())
    }
}

impl SyncNet {
    /// Keeps the seal epochs a member sent that this node lacks. Runs
    /// before the next message on the control stream is read, so records
    /// whose chunks need them are fetched only after.
    pub(crate) async fn merge_seals(
        &self,
        from: &EndpointId,
        epochs: Vec<EpochSecret>,
    ) -> Result<()> {
        anyhow::ensure!(
            epochs.len() <= MAX_EPOCHS,
            "{} seal epochs (at most {MAX_EPOCHS})",
            epochs.len()
        );
        let now_ms = (sovryn_store::now_ns() / 1_000_000).max(0) as u64;
        for e in &epochs {
            e.check_received(now_ms)?;
        }
        let new = self
            .shared
            .with_node_bulk(move |n| Ok(n.store.add_epochs(&epochs)?))
            .await?;
        if new > 0 {
            tracing::info!(
                "{new} new seal epoch(s) from {}: new chunks are sealed under the newest",
                from.fmt_short()
            );
            // The other sessions pass them on with the device list.
            self.devices_changed.send_modify(|v| *v += 1);
        }
        Ok(())
    }
}
