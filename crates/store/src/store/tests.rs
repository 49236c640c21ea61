//! Tests of the store: ingest, readers, the listing columns.

use super::*;

/// Two writable stores under one key (two nodes of a folder).
fn two_stores() -> ([tempfile::TempDir; 2], Store, Store) {
    let key = MasterKey::generate();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = Store::open(dirs[0].path(), &key, Access::ReadWrite).unwrap();
    let b = Store::open(dirs[1].path(), &key, Access::ReadWrite).unwrap();
    (dirs, a, b)
}

#[test]
fn large_ingest_names_the_same_chunks_and_reports_read_errors() {
    let (_dirs, mut a, mut b) = two_stores();
    let mut data = vec![0u8; 10_000_000];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let one = a.ingest(std::io::Cursor::new(&data), 0).unwrap();
    let two = b
        .ingest_large(std::io::Cursor::new(&data), 0, None)
        .unwrap();
    assert_eq!((one.size, &one.chunks), (two.size, &two.chunks));
    assert!(two.chunks.len() > BATCH_CHUNKS, "{}", two.chunks.len());
    b.flush().unwrap();
    let mut back = Vec::new();
    for id in &two.chunks {
        back.extend(b.read_chunk(id).unwrap());
    }
    assert_eq!(back, data);
    let text = b
        .ingest_large(std::io::Cursor::new(b"some words"), 100, None)
        .unwrap();
    assert_eq!(text.text.as_deref(), Some("some words"));

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    assert!(matches!(
        b.ingest_large(Failing(5_000_000), 0, None),
        Err(Error::Read(_))
    ));
}

#[test]
fn an_index_made_before_the_listing_columns_lists_the_same_and_gains_them() {
    let key = MasterKey::generate();
    let home = tempfile::tempdir().unwrap();
    let entry = |kind, mode, target: Option<&str>| Entry {
        kind,
        deleted: false,
        size: 3,
        mode,
        mtime_ns: 1_796_000_000_123_456_789,
        target: target.map(str::to_owned),
        vv: VersionVector::default(),
        author: "laptop".into(),
        actor: None,
        time_ns: 1,
        message: None,
        chunks: Vec::new(),
    };
    let change = |path: &str, entry| Change {
        path: path.into(),
        entry,
        disk: None,
        text: None,
    };
    {
        let mut s = Store::open(home.path(), &key, Access::ReadWrite).unwrap();
        s.commit(&[
            change("d", entry(EntryKind::Dir, 0o755, None)),
            change("d/a.txt", entry(EntryKind::File, 0o600, None)),
            change("d/link", entry(EntryKind::Symlink, 0o777, Some("a.txt"))),
            change("d/sub/deep.txt", entry(EntryKind::File, 0o644, None)),
        ])
        .unwrap();
    }
    let listed = |s: &Store| -> Vec<(String, u32, i64, String, Option<String>)> {
        s.children("d")
            .unwrap()
            .into_iter()
            .map(|c| (c.path, c.mode, c.mtime_ns, c.author, c.target))
            .collect()
    };
    let want = listed(&Store::open(home.path(), &key, Access::ReadOnly).unwrap());
    assert_eq!(want.len(), 2, "{want:?}");
    assert_eq!(
        want[1],
        (
            "d/link".into(),
            0o777,
            1_796_000_000_123_456_789,
            "laptop".into(),
            Some("a.txt".into())
        )
    );
    // A release before the columns wrote to the index in between: its
    // row's columns keep their defaults.
    let db = Connection::open(home.path().join("index.db")).unwrap();
    db.execute(
        "UPDATE files SET seq = (SELECT MAX(seq) + 1 FROM files), mode = 0, mtime_ns = 0, \
         author = '', target = NULL WHERE path = 'd/link'",
        [],
    )
    .unwrap();
    drop(db);
    let reopened = Store::open(home.path(), &key, Access::ReadWrite).unwrap();
    assert_eq!(listed(&reopened), want);
    drop(reopened);
    // The index as the code before the columns left it.
    let db = Connection::open(home.path().join("index.db")).unwrap();
    for col in ["mode", "mtime_ns", "author", "target"] {
        db.execute_batch(&format!("ALTER TABLE files DROP COLUMN {col}"))
            .unwrap();
    }
    db.execute("DELETE FROM meta WHERE key = ?1", [LISTING_UPTO])
        .unwrap();
    drop(db);
    let old = Store::open(home.path(), &key, Access::ReadOnly).unwrap();
    assert!(!old.listing_columns);
    assert_eq!(listed(&old), want);
    let upgraded = Store::open(home.path(), &key, Access::ReadWrite).unwrap();
    assert!(upgraded.listing_columns);
    assert_eq!(listed(&upgraded), want);
    assert_eq!(listed(&upgraded.reader().unwrap()), want);
}

#[test]
fn reader_sees_committed_chunks_and_sealed_copies_store_as_is() {
    let (_dirs, mut a, mut b) = two_stores();
    let data = vec![7u8; 100_000];
    let id = a.codec().id_of(&data);
    assert!(a.put_chunk(&id, &data).unwrap());
    let mut reader = a.reader().unwrap();
    // Appended, not yet flushed: the reader does not see it yet.
    assert!(!reader.has_chunk(&id).unwrap());
    a.flush().unwrap();
    assert_eq!(reader.read_chunk(&id).unwrap(), data);
    assert!(
        reader.put_chunk(&id, &data).is_err(),
        "a reader never writes"
    );
    // The sealed bytes move to another store of the mesh unchanged.
    let sealed = reader.read_sealed(&id).unwrap();
    b.codec().check_sealed(&sealed).unwrap();
    assert_eq!(b.put_sealed(vec![sealed]).unwrap(), 1);
    b.flush().unwrap();
    assert_eq!(b.read_chunk(&id).unwrap(), data);
    let again = reader.read_sealed(&id).unwrap();
    assert_eq!(b.put_sealed(vec![again]).unwrap(), 0);
}

#[test]
fn a_large_ingest_announces_its_durable_steps_and_not_a_re_read() {
    let key = MasterKey::generate();
    let da = tempfile::tempdir().unwrap();
    let mut a = Store::open(da.path(), &key, Access::ReadWrite).unwrap();
    let mut data = vec![0u8; 100 << 20];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let mut steps: Vec<(usize, Vec<(ChunkId, u32)>)> = Vec::new();
    let mut seen_durable = true;
    let reader = a.reader().unwrap();
    let one = {
        let mut tell = |first: usize, chunks: &[(ChunkId, u32)]| {
            // Announced chunks are indexed: a second handle sees them.
            seen_durable &= chunks
                .iter()
                .all(|(id, _)| reader.has_chunk(id).unwrap_or(false));
            steps.push((first, chunks.to_vec()));
        };
        a.ingest_large(std::io::Cursor::new(&data), 0, Some(&mut tell))
            .unwrap()
    };
    assert!(seen_durable, "a chunk was announced before it was durable");
    // Steps of at least 32 MiB (a batch of chunks more, at most), so 2 or
    // 3 of them in 100 MiB, and what is left unannounced is under a step
    // and a batch.
    let sizes: Vec<u64> = steps
        .iter()
        .map(|(_, c)| c.iter().map(|(_, l)| u64::from(*l)).sum())
        .collect();
    assert!(
        (2..=3).contains(&steps.len()),
        "100 MiB in steps of 32 MiB: {sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s >= 32 << 20), "{sizes:?}");
    assert!(
        (100u64 << 20) - sizes.iter().sum::<u64>() < 40 << 20,
        "{sizes:?}"
    );
    let mut next = 0;
    let mut offset = 0u64;
    for (first, chunks) in &steps {
        assert_eq!(*first, next, "steps follow each other");
        for (i, (id, len)) in chunks.iter().enumerate() {
            assert_eq!(*id, one.chunks[first + i]);
            assert_eq!(
                a.read_chunk(id).unwrap(),
                data[offset as usize..][..*len as usize]
            );
            offset += u64::from(*len);
        }
        next += chunks.len();
    }
    // The same file with one byte inserted: its chunks are all here but
    // the two around the insert, so nothing is announced.
    data.insert(50 << 20, b'!');
    let mut again = 0;
    let mut tell = |_: usize, _: &[(ChunkId, u32)]| again += 1;
    a.ingest_large(std::io::Cursor::new(&data), 0, Some(&mut tell))
        .unwrap();
    assert_eq!(again, 0);
}
