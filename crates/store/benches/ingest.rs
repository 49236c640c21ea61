//! Ingest throughput: chunk + hash + compress + encrypt + store + index.
//!
//! `cargo bench -p sovryn-store --bench ingest`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sovryn_store::{Access, Change, Entry, EntryKind, MasterKey, Store};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

fn entry(size: u64, chunks: Vec<sovryn_store::ChunkId>) -> Entry {
    Entry {
        kind: EntryKind::File,
        deleted: false,
        size,
        mode: 0o644,
        mtime_ns: 0,
        target: None,
        vv: Default::default(),
        author: "bench".into(),
        actor: None,
        time_ns: 0,
        message: None,
        chunks,
    }
}

fn ingest_large(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let data = random_bytes(LEN, 1);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(LEN as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let mut seed = 100;
    g.bench_function("incompressible_64MiB_file", |b| {
        b.iter_batched(
            || {
                seed += 1;
                let dir = tempfile::tempdir().unwrap();
                let store =
                    Store::open(dir.path(), &MasterKey::generate(), Access::ReadWrite).unwrap();
                (dir, store)
            },
            |(dir, mut store)| {
                let ing = store.ingest(&data[..], 0).unwrap();
                store
                    .commit(&[Change {
                        path: "big.bin".into(),
                        entry: entry(ing.size, ing.chunks),
                        disk: None,
                        text: None,
                    }])
                    .unwrap();
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn ingest_small_files(c: &mut Criterion) {
    const FILES: usize = 10_000;
    let files: Vec<Vec<u8>> = (0..FILES).map(|i| random_bytes(1024, i as u64)).collect();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(FILES as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    g.bench_function("10000_files_of_1KiB", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store =
                    Store::open(dir.path(), &MasterKey::generate(), Access::ReadWrite).unwrap();
                (dir, store)
            },
            |(dir, mut store)| {
                // Grouped as the scanner does: 2000 files per pack sync + transaction.
                for (g, group) in files.chunks(2000).enumerate() {
                    let mut changes = Vec::with_capacity(group.len());
                    for (i, f) in group.iter().enumerate() {
                        let ing = store.ingest(&f[..], 0).unwrap();
                        changes.push(Change {
                            path: format!("d{g}/f{i}"),
                            entry: entry(ing.size, ing.chunks),
                            disk: None,
                            text: None,
                        });
                    }
                    store.commit(&changes).unwrap();
                }
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest_large, ingest_small_files);
criterion_main!(benches);
