//! Bandwidth limits: token buckets in KiB shared by every peer.

use super::*;

/// A token bucket in KiB: one cell per KiB.
pub(crate) type Bucket = Arc<governor::DefaultDirectRateLimiter>;

/// Upload and download limits; `None` is unlimited.
#[derive(Default, Clone)]
pub(crate) struct Limits {
    pub(crate) send: Option<Bucket>,
    pub(crate) recv: Option<Bucket>,
}

pub(crate) fn bucket(kib_per_sec: u64) -> Option<Bucket> {
    let rate = std::num::NonZeroU32::new(u32::try_from(kib_per_sec).unwrap_or(u32::MAX))?;
    // A burst of at least one whole chunk (256 KiB) so any chunk can pass.
    let burst = rate.max(std::num::NonZeroU32::new(256).unwrap_or(std::num::NonZeroU32::MIN));
    Some(Arc::new(governor::RateLimiter::direct(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// Waits until `bytes` may pass `bucket`.
pub(crate) async fn throttle(bucket: Option<Bucket>, bytes: usize) {
    let Some(b) = bucket else { return };
    let kib = bytes.div_ceil(1024).clamp(1, 256) as u32;
    if let Some(n) = std::num::NonZeroU32::new(kib) {
        let _ = b.until_n_ready(n).await;
    }
}
