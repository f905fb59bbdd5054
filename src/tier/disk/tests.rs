//! The disk tier's files: round trips, mismatches, corruption, crashes, a full queue.

use std::fs::File;

use super::*;
use crate::kv::block_hash;
use crate::tier::TempDir;

const BS: usize = 4;
const IMAGE: u64 = 1000;

fn ns() -> DiskNamespace {
    DiskNamespace {
        model: 0x1234_5678_9abc_def0,
        dtype: "f16".into(),
        block_size: BS,
        kernel_family: "split".into(),
        image_bytes: IMAGE,
    }
}

/// Block `i` of a chain: tokens derived from `i`, image bytes from `seed`.
fn entry(parent: Option<BlockHash>, salt: Option<u64>, i: u32, seed: u8) -> DiskEntry {
    let tokens: Vec<u32> = (0..BS as u32).map(|t| i * 100 + t).collect();
    DiskEntry {
        key: block_hash(parent, &tokens, salt),
        parent,
        salt,
        tokens,
        image: (0..IMAGE)
            .map(|b| (b as u8).wrapping_mul(31) ^ seed)
            .collect(),
    }
}

fn load(tier: &DiskTier, e: &DiskEntry) -> DiskLoad {
    tier.load(e.key, e.parent, e.salt, &e.tokens)
}

#[test]
fn round_trip_is_bit_identical() {
    let root = TempDir::new("roundtrip");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let a = entry(None, None, 1, 7);
    let b = entry(Some(a.key), Some(99), 2, 8);
    assert!(!tier.contains(a.key));
    assert_eq!(load(&tier, &a), DiskLoad::Miss);
    tier.store(a.clone());
    tier.store(b.clone());
    tier.flush();
    assert!(tier.contains(a.key) && tier.contains(b.key));
    assert_eq!(load(&tier, &a), DiskLoad::Hit(a.image.clone()));
    assert_eq!(load(&tier, &b), DiskLoad::Hit(b.image.clone()));
    // Storing again is skipped: the file exists.
    tier.store(a.clone());
    tier.flush();
    let s = tier.stats();
    let file_len = ns().file_len().unwrap();
    assert_eq!(
        s,
        DiskStats {
            hits: 2,
            misses: 1,
            bytes_read: 2 * file_len,
            writes: 2,
            bytes_written: 2 * file_len,
            files: 2,
            ..DiskStats::default()
        }
    );
    let name = tier.dir().join(file_name(a.key));
    assert_eq!(fs::metadata(&name).unwrap().len(), file_len);
    assert_eq!(
        tier.dir().file_name().unwrap().to_str().unwrap(),
        "123456789abcdef0-f16-bs4-split-1000"
    );
    // A new process (tier) finds the same entries.
    drop(tier);
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    assert_eq!(load(&tier, &b), DiskLoad::Hit(b.image.clone()));
}

#[test]
fn mismatched_block_is_rejected_never_a_hit() {
    let root = TempDir::new("mismatch");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let parent = entry(None, None, 0, 0);
    let e = entry(Some(parent.key), Some(5), 1, 1);
    let mut other_tokens = e.tokens.clone();
    other_tokens[2] += 1;
    let cases: [(Option<BlockHash>, Option<u64>, &[u32]); 5] = [
        (e.parent, e.salt, &other_tokens),
        (e.parent, e.salt, &e.tokens[..BS - 1]),
        (None, e.salt, &e.tokens),
        (Some(BlockHash(parent.key.0 ^ 1)), e.salt, &e.tokens),
        (e.parent, None, &e.tokens),
    ];
    for (i, (p, s, t)) in cases.into_iter().enumerate() {
        tier.store(e.clone());
        tier.flush();
        assert!(tier.contains(e.key));
        match tier.load(e.key, p, s, t) {
            DiskLoad::Rejected(_) => {}
            other => panic!("case {i}: {other:?}"),
        }
        assert!(!tier.contains(e.key), "case {i}: file not removed");
        assert_eq!(tier.stats().rejected, i as u64 + 1);
    }
    // A different salt on the same file.
    tier.store(e.clone());
    tier.flush();
    assert!(matches!(
        tier.load(e.key, e.parent, Some(6), &e.tokens),
        DiskLoad::Rejected(_)
    ));
    assert_eq!(load(&tier, &e), DiskLoad::Miss);
}

#[test]
fn other_namespaces_miss() {
    let root = TempDir::new("namespaces");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let e = entry(None, None, 3, 3);
    tier.store(e.clone());
    tier.flush();
    let others = [
        DiskNamespace {
            dtype: "f32".into(),
            ..ns()
        },
        DiskNamespace {
            block_size: 8,
            ..ns()
        },
        DiskNamespace {
            kernel_family: "serial".into(),
            ..ns()
        },
        DiskNamespace { model: 1, ..ns() },
        DiskNamespace {
            image_bytes: IMAGE + 2,
            ..ns()
        },
    ];
    for other in others {
        let t = DiskTier::open(&root.0, other.clone()).unwrap();
        assert_ne!(t.dir(), tier.dir());
        assert!(!t.contains(e.key));
        assert_eq!(load(&t, &e), DiskLoad::Miss, "{other:?}");
        assert_eq!(t.stats().rejected, 0);
    }
    // And the original is untouched.
    assert_eq!(load(&tier, &e), DiskLoad::Hit(e.image.clone()));
}

#[test]
fn file_from_another_namespace_is_rejected() {
    // A file copied (or linked) into another namespace's directory.
    let root = TempDir::new("foreign");
    let a = DiskTier::open(&root.0, ns()).unwrap();
    let other = DiskNamespace {
        dtype: "f32".into(),
        ..ns()
    };
    let b = DiskTier::open(&root.0, other).unwrap();
    let e = entry(None, None, 4, 4);
    a.store(e.clone());
    a.flush();
    fs::copy(
        a.dir().join(file_name(e.key)),
        b.dir().join(file_name(e.key)),
    )
    .unwrap();
    assert!(matches!(load(&b, &e), DiskLoad::Rejected(_)));
    assert_eq!(load(&b, &e), DiskLoad::Miss);
}

/// Writes `e`, corrupts its file with `damage`, and checks the load is rejected, counted,
/// the file removed and the next load a miss.
fn check_corruption(tag: &str, damage: impl Fn(&mut Vec<u8>)) {
    let root = TempDir::new(tag);
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let e = entry(None, Some(1), 5, 5);
    tier.store(e.clone());
    tier.flush();
    let path = tier.dir().join(file_name(e.key));
    let mut bytes = fs::read(&path).unwrap();
    damage(&mut bytes);
    fs::write(&path, &bytes).unwrap();
    match load(&tier, &e) {
        DiskLoad::Rejected(reason) => assert!(!reason.is_empty()),
        other => panic!("{tag}: {other:?}"),
    }
    assert!(!path.exists(), "{tag}: rejected file not removed");
    assert_eq!(tier.stats().rejected, 1);
    assert_eq!(load(&tier, &e), DiskLoad::Miss);
    // And it can be stored again.
    tier.store(e.clone());
    tier.flush();
    assert_eq!(load(&tier, &e), DiskLoad::Hit(e.image.clone()));
}

#[test]
fn truncated_file_is_rejected() {
    check_corruption("truncated", |b| b.truncate(b.len() - 1));
    check_corruption("truncated-header", |b| b.truncate(10));
    check_corruption("empty", |b| b.clear());
    check_corruption("extended", |b| b.push(0));
}

#[test]
fn flipped_image_byte_is_rejected() {
    check_corruption("image-flip", |b| {
        let i = FIXED_HEADER + ns().var_len() + 500;
        b[i] ^= 0x10;
    });
    check_corruption("crc-flip", |b| {
        let n = b.len();
        b[n - 1] ^= 1;
    });
}

#[test]
fn flipped_header_byte_is_rejected() {
    for (tag, at) in [
        ("magic", 0),
        ("version", 8),
        ("flags", 12),
        ("model", 16),
        ("key", 24),
        ("salt", 40),
        ("dtype", FIXED_HEADER),
        ("token", FIXED_HEADER + 3 + 5 + 4),
    ] {
        check_corruption(&format!("header-{tag}"), |b| b[at] ^= 0x40);
    }
}

#[test]
fn leftover_temp_file_is_never_loaded_and_is_swept() {
    let root = TempDir::new("crash");
    let e = entry(None, None, 6, 6);
    let dir = {
        let tier = DiskTier::open(&root.0, ns()).unwrap();
        tier.dir().to_path_buf()
    };
    // What a writer killed before its rename leaves: a complete-looking temporary file
    // named as the writer names them (here even with valid content), an hour old.
    let full = {
        let tier = DiskTier::open(&root.0, ns()).unwrap();
        tier.store(e.clone());
        tier.flush();
        fs::read(tier.dir().join(file_name(e.key))).unwrap()
    };
    fs::remove_file(dir.join(file_name(e.key))).unwrap();
    let old = dir.join(format!(".{:016x}.4242.0.tmp", e.key.0));
    let fresh = dir.join(format!(".{:016x}.4242.1.tmp", e.key.0));
    fs::write(&old, &full).unwrap();
    fs::write(&fresh, &full[..full.len() / 2]).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    let tier = DiskTier::open(&root.0, ns()).unwrap();
    assert!(!old.exists(), "old temporary file not swept");
    // A young one may be another live process's write in progress: left alone, never read.
    assert!(fresh.exists());
    assert!(!tier.contains(e.key));
    assert_eq!(load(&tier, &e), DiskLoad::Miss);
    assert_eq!(tier.stats().rejected, 0);
}

#[test]
fn full_queue_drops_and_counts() {
    let root = TempDir::new("queue");
    let cost = entry_cost(&entry(None, None, 0, 0));
    // Room for two entries and a half.
    let limit = 2 * cost + cost / 2;
    let tier = DiskTier::open_with_queue_limit(&root.0, ns(), limit).unwrap();
    tier.hold_writer(true);
    let entries: Vec<DiskEntry> = (0..10).map(|i| entry(None, None, i, i as u8)).collect();
    for e in &entries {
        tier.store(e.clone());
        assert!(tier.queued_bytes() <= limit);
    }
    // A key already queued is not queued twice (nor counted as dropped).
    tier.store(entries[0].clone());
    assert_eq!(tier.stats().dropped_writes, 8);
    tier.hold_writer(false);
    tier.flush();
    assert_eq!(tier.queued_bytes(), 0);
    let s = tier.stats();
    assert_eq!((s.writes, s.dropped_writes, s.write_errors), (2, 8, 0));
    assert!(tier.contains(entries[0].key) && tier.contains(entries[1].key));
    assert!(!tier.contains(entries[2].key));
    // Room again once written.
    tier.store(entries[2].clone());
    tier.flush();
    assert!(tier.contains(entries[2].key));
}

#[test]
fn wrong_lengths_are_write_errors() {
    let root = TempDir::new("lengths");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let mut short_image = entry(None, None, 1, 1);
    short_image.image.pop();
    let mut short_tokens = entry(None, None, 2, 2);
    short_tokens.tokens.pop();
    tier.store(short_image.clone());
    tier.store(short_tokens.clone());
    tier.flush();
    assert_eq!(tier.stats().write_errors, 2);
    assert!(!tier.contains(short_image.key) && !tier.contains(short_tokens.key));
    assert_eq!(fs::read_dir(tier.dir()).unwrap().count(), 0);
}

#[test]
fn drop_flushes_queued_writes() {
    let root = TempDir::new("dropflush");
    let entries: Vec<DiskEntry> = (0..20).map(|i| entry(None, None, i, 1)).collect();
    {
        let tier = DiskTier::open(&root.0, ns()).unwrap();
        for e in &entries {
            tier.store(e.clone());
        }
    }
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    for e in &entries {
        assert_eq!(load(&tier, e), DiskLoad::Hit(e.image.clone()));
    }
}

#[test]
fn dead_writer_neither_hangs_flush_nor_drop() {
    let root = TempDir::new("deadwriter");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    tier.hold_writer(true);
    tier.store(entry(None, None, 1, 1));
    // Simulate the writer dying with a job queued: what its guard does on a panic.
    drop(WriterAlive(&tier.shared));
    tier.flush();
    tier.store(entry(None, None, 2, 2));
    assert_eq!(tier.stats().write_errors, 2);
    drop(tier);
}

#[test]
fn bad_namespaces_are_refused() {
    let root = TempDir::new("badns");
    for bad in [
        DiskNamespace {
            dtype: "../x".into(),
            ..ns()
        },
        DiskNamespace {
            kernel_family: String::new(),
            ..ns()
        },
        DiskNamespace {
            kernel_family: ".hidden".into(),
            ..ns()
        },
        DiskNamespace {
            block_size: 0,
            ..ns()
        },
        DiskNamespace {
            image_bytes: 0,
            ..ns()
        },
        DiskNamespace {
            image_bytes: u64::MAX - 10,
            ..ns()
        },
    ] {
        assert!(matches!(
            DiskTier::open(&root.0, bad),
            Err(DiskError::InvalidNamespace(_))
        ));
    }
    assert_eq!(fs::read_dir(&root.0).unwrap().count(), 0);
}

#[test]
fn concurrent_loads_and_stores() {
    let root = TempDir::new("threads");
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    let entries: Vec<DiskEntry> = (0..16).map(|i| entry(None, None, i, 9)).collect();
    std::thread::scope(|s| {
        for chunk in entries.chunks(4) {
            let tier = &tier;
            s.spawn(move || {
                for e in chunk {
                    tier.store(e.clone());
                    // Either not there yet or complete: never a partial file.
                    let got = load(tier, e);
                    assert!(
                        got == DiskLoad::Miss || got == DiskLoad::Hit(e.image.clone()),
                        "{got:?}"
                    );
                }
            });
        }
    });
    tier.flush();
    assert_eq!(tier.stats().rejected, 0);
    for e in &entries {
        assert_eq!(load(&tier, e), DiskLoad::Hit(e.image.clone()));
    }
}

#[test]
fn a_capped_directory_drops_least_recently_used_leaves_and_keeps_its_order_across_opens() {
    let root = TempDir::new("cap");
    let file = ns().file_len().unwrap();
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    tier.set_max_bytes(Some(3 * file + file / 2));
    // Chain a → b → c, then d: four files for a cap of three. c (the oldest leaf) goes.
    let a = entry(None, None, 1, 1);
    let b = entry(Some(a.key), None, 2, 2);
    let c = entry(Some(b.key), None, 3, 3);
    let d = entry(None, None, 4, 4);
    for e in [&a, &b, &c, &d] {
        tier.store(e.clone());
        tier.flush();
    }
    assert!(!tier.contains(c.key), "the chain's end goes first");
    assert!(tier.contains(a.key) && tier.contains(b.key) && tier.contains(d.key));
    assert_eq!((tier.stats().evictions, tier.stats().files), (1, 3));
    // Using a and b makes d the least recently used leaf.
    assert!(matches!(load(&tier, &a), DiskLoad::Hit(_)));
    assert!(matches!(load(&tier, &b), DiskLoad::Hit(_)));
    let e = entry(None, None, 5, 5);
    tier.store(e.clone());
    tier.flush();
    assert!(!tier.contains(d.key) && tier.contains(e.key));
    drop(tier);
    // A reopened tier rebuilds the index from the files' times (a, b loaded, then e written);
    // a smaller cap applies at once, and a parent never goes before its child: b goes first
    // though a was used before it.
    let tier = DiskTier::open(&root.0, ns()).unwrap();
    assert_eq!(tier.stats().files, 3);
    tier.set_max_bytes(Some(2 * file));
    assert!(tier.contains(a.key) && !tier.contains(b.key) && tier.contains(e.key));
    tier.set_max_bytes(Some(1));
    assert_eq!(tier.stats().files, 1);
    assert!(tier.contains(e.key), "{:?}", tier.stats());
}
