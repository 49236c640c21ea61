//! Object names in a bucket: nothing in them but the folder's public id,
//! random names and counters.

use object_store::path::Path;

/// The name of the node's sealed config vault.
pub fn vault(prefix: &Path) -> Path {
    prefix.clone().join("v")
}

/// Where a folder's packs lie.
pub fn packs(prefix: &Path, folder_id: &str) -> Path {
    prefix.clone().join(folder_id).join("p")
}

/// Where a folder's index snapshots lie.
pub fn snapshots(prefix: &Path, folder_id: &str) -> Path {
    prefix.clone().join(folder_id).join("s")
}

/// Where the marks of packs due to go lie (`d/PACK`, a pack pruning
/// found nothing live in but what it copied elsewhere).
pub fn marks(prefix: &Path, folder_id: &str) -> Path {
    prefix.clone().join(folder_id).join("d")
}

/// A new pack's name: 128 random bits.
pub fn new_pack(prefix: &Path, folder_id: &str) -> Path {
    packs(prefix, folder_id).join(hex::encode(rand::random::<[u8; 16]>()))
}

/// The name of snapshot number `counter` (random tail: two pushers at once
/// never overwrite each other).
pub fn new_snapshot(prefix: &Path, folder_id: &str, counter: u64) -> Path {
    snapshots(prefix, folder_id).join(format!(
        "{counter:016x}-{}",
        hex::encode(rand::random::<[u8; 4]>())
    ))
}

/// The counter of a snapshot's name, if it is one.
pub fn snapshot_counter(name: &Path) -> Option<u64> {
    counter_of(name.filename()?)
}

/// The counter of a snapshot's file name (`COUNTER-RANDOM`), if it is one.
pub fn counter_of(file_name: &str) -> Option<u64> {
    let (counter, _) = file_name.split_once('-')?;
    u64::from_str_radix(counter, 16).ok()
}

/// Padded sizes: powers of two from 64 KiB, so a size tells only its class.
pub fn size_class(len: usize) -> usize {
    len.max(64 * 1024).next_power_of_two()
}
