//! Whole KV blocks copied between the pools and host images (`wllm::gpu::kv_transfer`), for
//! buffer and texture pools, f16 and f32, against `KvPool::read_words`.
//!
//! Every pool starts as random words (texture padding included, never zeros), so a word read
//! from or written to the wrong slot, layer or pool fails. Texture layouts put several blocks
//! in a row and spread the pool over several rows, the last one part empty.

mod common;

use std::time::{Duration, Instant};

use common::plumbing::*;
use wllm::WeightDType::{self, F16, F32};
use wllm::gpu::GpuError;
use wllm::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout, slot_words};
use wllm::gpu::kv_transfer::{
    BlockGeometry, BlockReadback, read_blocks, read_blocks_staged, write_blocks,
    write_blocks_staged,
};

/// One layout under test: the geometry and where the pools live.
#[derive(Clone, Copy, Debug)]
struct Case {
    geo: BlockGeometry,
    storage: KvStorage,
}

/// Buffer cases, then texture cases of several blocks a row over several rows.
fn cases() -> Vec<Case> {
    let geo = |dtype, kv_dim, block_size, num_blocks, layers| BlockGeometry {
        block_size,
        kv_dim,
        dtype,
        num_blocks,
        layers,
    };
    let mut out = Vec::new();
    // (dtype, kv_dim, block_size, num_blocks, layers)
    for g in [
        geo(F16, 24, 1, 37, 2),
        geo(F32, 24, 4, 13, 3),
        geo(F16, 24, 16, 7, 2),
        geo(F16, 6, 4, 9, 3), // 3-word slots: parts not a multiple of 16 bytes
    ] {
        out.push(Case {
            geo: g,
            storage: KvStorage::Buffer,
        });
    }
    // (geometry, blocks per row)
    for (g, per_row) in [
        (geo(F16, 24, 1, 37, 2), 5),
        (geo(F32, 24, 4, 13, 3), 3),
        (geo(F16, 24, 16, 7, 2), 2),
        (geo(F32, 12, 4, 10, 2), 4),
    ] {
        let layout = KvTextureLayout::with_blocks_per_row(
            g.num_blocks,
            g.block_size,
            g.kv_dim,
            g.dtype,
            per_row,
            ctx().limits.max_texture_dimension_2d,
        )
        .expect("layout fits");
        assert!(layout.rows() > 1 && layout.row_slots() as usize > g.block_size);
        out.push(Case {
            geo: g,
            storage: KvStorage::Texture(layout),
        });
    }
    out
}

/// A case's K and V pools, one each per layer, all random.
struct Pools {
    case: Case,
    k: Vec<KvPool>,
    v: Vec<KvPool>,
}

impl Pools {
    fn new(rng: &mut Rng, case: Case) -> Pools {
        let layers = case.geo.layers;
        let mut pool = || random_pool(rng, case);
        let (k, v) = (0..layers).map(|_| (pool(), pool())).unzip();
        Pools { case, k, v }
    }

    fn slots(&self) -> usize {
        self.case.geo.num_blocks * self.case.geo.block_size
    }

    /// Every layer's (K words, V words), slot order.
    fn words(&self) -> Vec<(Vec<u32>, Vec<u32>)> {
        let (g, s) = (self.case.geo, self.case.storage);
        let read = |p: &KvPool| {
            p.read_words(ctx(), s, self.slots(), g.kv_dim, g.dtype)
                .expect("read words")
        };
        self.k
            .iter()
            .zip(&self.v)
            .map(|(k, v)| (read(k), read(v)))
            .collect()
    }

    fn read(&self, blocks: &[u32]) -> Result<BlockReadback, GpuError> {
        let c = self.case;
        read_blocks(ctx(), &self.k, &self.v, c.storage, c.geo, blocks)
    }

    fn write(&self, writes: &[(u32, &[u8])]) -> Result<(), GpuError> {
        let c = self.case;
        write_blocks(ctx(), &self.k, &self.v, c.storage, c.geo, writes)
    }
}

/// A zero pool of the case made random in every word it holds.
fn random_pool(rng: &mut Rng, case: Case) -> KvPool {
    let g = case.geo;
    let slots = g.num_blocks * g.block_size;
    let pool = KvPool::zeros(ctx(), "pool", case.storage, slots, g.kv_dim, g.dtype).expect("pool");
    match &pool {
        KvPool::Buffer(b) => {
            let words: Vec<u32> = (0..b.size() / 4).map(|_| rng.next_u64() as u32).collect();
            ctx().queue.write_buffer(b, 0, bytemuck::cast_slice(&words));
        }
        KvPool::Texture { texture, .. } => {
            let size = texture.size();
            let texels = (size.width * size.height) as usize;
            let words: Vec<u32> = (0..4 * texels).map(|_| rng.next_u64() as u32).collect();
            let layout = wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(size.width * 16),
                rows_per_image: Some(size.height),
            };
            let data = bytemuck::cast_slice(&words);
            ctx()
                .queue
                .write_texture(texture.as_image_copy(), data, layout, size);
        }
    }
    pool
}

/// Words of one block of one pool.
fn block_words(geo: BlockGeometry, words: &[u32], block: u32) -> &[u32] {
    let n = geo.block_size * slot_words(geo.kv_dim, geo.dtype);
    &words[block as usize * n..(block as usize + 1) * n]
}

/// The image `words` (from [`Pools::words`]) give block `block`: per layer K then V.
fn want_image(geo: BlockGeometry, words: &[(Vec<u32>, Vec<u32>)], block: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in words {
        for part in [k, v] {
            for w in block_words(geo, part, block) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }
    out
}

/// `words` with the image of each `(block, image)` put in, as a write should leave them.
fn with_images(
    geo: BlockGeometry,
    words: &[(Vec<u32>, Vec<u32>)],
    writes: &[(u32, &[u8])],
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut out = words.to_vec();
    let n = geo.block_size * slot_words(geo.kv_dim, geo.dtype);
    for &(block, img) in writes {
        let image: Vec<u32> = img
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut parts = image.chunks_exact(n);
        for (k, v) in &mut out {
            for part in [k, v] {
                let at = block as usize * n;
                part[at..at + n].copy_from_slice(parts.next().expect("a part per pool"));
            }
        }
    }
    out
}

fn random_image(rng: &mut Rng, geo: BlockGeometry) -> Vec<u8> {
    (0..geo.image_bytes()).map(|_| rng.byte()).collect()
}

#[track_caller]
fn assert_images_eq(what: &str, got: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "{what}: image count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: image {i} length");
        if let Some(at) = g.iter().zip(w).position(|(a, b)| a != b) {
            panic!("{what}: image {i} differs at byte {at}");
        }
    }
}

#[track_caller]
fn assert_words_eq(what: &str, got: &[(Vec<u32>, Vec<u32>)], want: &[(Vec<u32>, Vec<u32>)]) {
    assert_eq!(got.len(), want.len(), "{what}: layers");
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        for (kv, g, w) in [("K", &g.0, &w.0), ("V", &g.1, &w.1)] {
            assert_eq!(g.len(), w.len(), "{what}: layer {l} {kv} length");
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                panic!(
                    "{what}: layer {l} {kv} word {i}: {:#010x} vs {:#010x}",
                    g[i], w[i]
                );
            }
        }
    }
}

/// Submits an empty command buffer (queue writes land before it).
fn submit_empty() {
    let enc = ctx()
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("empty"),
        });
    ctx().queue.submit([enc.finish()]);
}

/// Images of `[last, 0, 3]` (and repeats) are the pools' words for those blocks, K then V per
/// layer, whatever the pools are.
#[test]
fn read_gives_each_blocks_words_k_then_v_per_layer() {
    for (n, case) in cases().into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(100 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;
        assert_eq!(
            g.image_bytes(),
            2 * g.layers as u64 * g.part_bytes(),
            "{what}"
        );
        let last = g.num_blocks as u32 - 1;
        let blocks = [last, 0, 3, last];
        let readback = pools.read(&blocks).expect("read");
        assert_eq!(readback.blocks(), &blocks);
        let got = readback.wait(ctx()).expect("images");
        let words = pools.words();
        let want: Vec<Vec<u8>> = blocks.iter().map(|&b| want_image(g, &words, b)).collect();
        assert_images_eq(&what, &got, &want);
    }
}

/// Writes change exactly the written blocks of every pool, and a block read, written into
/// another block and read again gives the same image, also from a texture pool into a buffer
/// pool of the same geometry and back.
#[test]
fn write_changes_only_its_blocks_and_round_trips() {
    for (n, case) in cases().into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(200 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;
        let last = g.num_blocks as u32 - 1;
        let before = pools.words();

        let (a, b) = (random_image(&mut rng, g), random_image(&mut rng, g));
        let writes = [(1, &a[..]), (last - 1, &b[..])];
        pools.write(&writes).expect("write");
        submit_empty();
        let after = pools.words();
        assert_words_eq(
            &format!("{what} write"),
            &after,
            &with_images(g, &before, &writes),
        );

        // Read 0 and last, write them into 2 and 1, read 2 and 1: the same images.
        let images = pools
            .read(&[0, last])
            .expect("read")
            .wait(ctx())
            .expect("images");
        let writes = [(2, &images[0][..]), (1, &images[1][..])];
        pools.write(&writes).expect("write back");
        let again = pools
            .read(&[2, 1])
            .expect("read")
            .wait(ctx())
            .expect("images");
        assert_images_eq(&format!("{what} round trip"), &again, &images);
        assert_words_eq(
            &format!("{what} round trip words"),
            &pools.words(),
            &with_images(g, &after, &writes),
        );

        // The image does not depend on the pools' storage.
        let buffers = Pools::new(
            &mut rng,
            Case {
                storage: KvStorage::Buffer,
                ..case
            },
        );
        buffers.write(&writes).expect("write into buffers");
        let there = buffers
            .read(&[2, 1])
            .expect("read")
            .wait(ctx())
            .expect("images");
        assert_images_eq(&format!("{what} via buffers"), &there, &images);
        pools.write(&[(3, &there[0][..])]).expect("write back");
        let back = pools.read(&[3]).expect("read").wait(ctx()).expect("images");
        assert_images_eq(&format!("{what} back"), &back, &images[..1]);
    }
}

/// A read submitted before a write to the same block returns the old bytes (the evict-then-
/// reuse case of one engine step); the pools show the new ones after the next submit.
#[test]
fn read_before_write_returns_the_old_bytes() {
    for (n, case) in cases().into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(300 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;
        let b = g.num_blocks as u32 / 2;
        let old = want_image(g, &pools.words(), b);
        let readback = pools.read(&[b]).expect("read");
        let new = random_image(&mut rng, g);
        pools.write(&[(b, &new)]).expect("write");
        submit_empty();
        let got = readback.wait(ctx()).expect("images");
        assert_images_eq(&format!("{what} old"), &got, &[old]);
        assert_eq!(want_image(g, &pools.words(), b), new, "{what} new");
    }
}

/// Blocks outside the pool, images of the wrong length and pools that do not match the
/// geometry are errors, and nothing changes.
#[test]
fn bad_blocks_images_and_pools_are_refused_and_change_nothing() {
    let all = cases();
    for (n, case) in [all[1], all[5]].into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(400 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;
        let nb = g.num_blocks as u32;
        let before = pools.words();
        let good = random_image(&mut rng, g);
        let short = &good[..good.len() - 4];
        let mut long = good.clone();
        long.extend_from_slice(&[1, 2, 3, 4]);

        assert!(pools.read(&[0, nb]).is_err(), "{what}: read past the end");
        assert!(pools.read(&[u32::MAX]).is_err(), "{what}: read u32::MAX");
        for writes in [
            vec![(0, &good[..]), (nb, &good[..])],
            vec![(0, &good[..]), (1, short)],
            vec![(0, &good[..]), (1, &long[..])],
            vec![(0, &[][..])],
        ] {
            let blocks: Vec<u32> = writes.iter().map(|w| w.0).collect();
            let err = pools.write(&writes);
            assert!(
                matches!(err, Err(GpuError::Shape { .. })),
                "{what}: {blocks:?} {err:?}"
            );
        }
        // Pools that do not match the geometry or the storage.
        let c = case;
        let fewer = BlockGeometry {
            layers: g.layers - 1,
            ..g
        };
        let more = BlockGeometry {
            num_blocks: g.num_blocks + 100,
            ..g
        };
        let other = match c.storage {
            KvStorage::Buffer => KvStorage::Texture(
                KvTextureLayout::new(g.num_blocks, g.block_size, g.kv_dim, g.dtype, 4096)
                    .expect("layout"),
            ),
            KvStorage::Texture(_) => KvStorage::Buffer,
        };
        let (k, v) = (&pools.k, &pools.v);
        let image = &good[..];
        assert!(
            read_blocks(ctx(), k, v, c.storage, fewer, &[0]).is_err(),
            "{what}"
        );
        assert!(
            read_blocks(ctx(), k, v, c.storage, more, &[0]).is_err(),
            "{what}"
        );
        assert!(read_blocks(ctx(), k, v, other, g, &[0]).is_err(), "{what}");
        assert!(
            read_blocks(ctx(), &k[1..], v, c.storage, g, &[0]).is_err(),
            "{what}"
        );
        let w = [(0, image)];
        assert!(
            write_blocks(ctx(), k, v, c.storage, more, &w).is_err(),
            "{what}"
        );
        assert!(write_blocks(ctx(), k, v, other, g, &w).is_err(), "{what}");
        assert!(
            write_blocks(ctx(), k, &v[1..], c.storage, g, &w).is_err(),
            "{what}"
        );
        submit_empty();
        assert_words_eq(&format!("{what} unchanged"), &pools.words(), &before);
    }
}

/// `try_take` returns `None` or the images, then (once taken) an error; an empty read is
/// complete at once.
#[test]
fn try_take_completes_once_and_empty_reads_are_immediate() {
    let all = cases();
    for (n, case) in [all[0], all[6]].into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(500 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;

        let mut empty = pools.read(&[]).expect("empty read");
        assert!(empty.blocks().is_empty());
        let got = empty
            .try_take(ctx())
            .expect("complete at once")
            .expect("no error");
        assert!(got.is_empty(), "{what}");
        assert!(matches!(empty.try_take(ctx()), Some(Err(_))), "{what}");
        let none = pools
            .read(&[])
            .expect("empty read")
            .wait(ctx())
            .expect("empty");
        assert!(none.is_empty(), "{what}");

        let blocks = [4, 2, 0];
        let words = pools.words();
        let want: Vec<Vec<u8>> = blocks.iter().map(|&b| want_image(g, &words, b)).collect();
        let mut readback = pools.read(&blocks).expect("read");
        let start = Instant::now();
        let got = loop {
            if let Some(r) = readback.try_take(ctx()) {
                break r.expect("images");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: never completed"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_images_eq(&what, &got, &want);
        assert!(
            matches!(readback.try_take(ctx()), Some(Err(GpuError::Readback(_)))),
            "{what}: taken twice"
        );
    }
}

/// Reads of more blocks than a staging buffer holds split over several (the last one part
/// full, or one image each when an image is over the cap) and keep the order of `blocks`.
#[test]
fn large_reads_split_over_staging_buffers() {
    let all = cases();
    for (n, case) in [all[1], all[3], all[4], all[7]].into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(600 + n as u64);
        let pools = Pools::new(&mut rng, case);
        let g = case.geo;
        let mut blocks: Vec<u32> = (0..230).map(|_| rng.below(g.num_blocks)).collect();
        blocks[0] = g.num_blocks as u32 - 1;
        let words = pools.words();
        let want: Vec<Vec<u8>> = blocks.iter().map(|&b| want_image(g, &words, b)).collect();
        let image = g.image_bytes();
        for cap in [7 * image + image / 2, image - 4, 1 << 30] {
            let c = case;
            let got = read_blocks_staged(ctx(), &pools.k, &pools.v, c.storage, g, &blocks, cap)
                .expect("read")
                .wait(ctx())
                .expect("images");
            assert_images_eq(&format!("{what} cap {cap}"), &got, &want);
        }
    }
}

/// Writes of more images than an upload buffer holds split over several and land like the
/// same writes one by one: a later write to a block wins.
#[test]
fn large_writes_split_over_upload_buffers() {
    let all = cases();
    for (n, case) in [all[1], all[3], all[4], all[7]].into_iter().enumerate() {
        let what = format!("{case:?}");
        let mut rng = Rng::new(700 + n as u64);
        let g = case.geo;
        let image = g.image_bytes();
        for cap in [7 * image + image / 2, image - 4, 1 << 30] {
            let pools = Pools::new(&mut rng, case);
            let before = pools.words();
            let blocks: Vec<u32> = (0..40).map(|_| rng.below(g.num_blocks)).collect();
            let images: Vec<Vec<u8>> = blocks.iter().map(|_| random_image(&mut rng, g)).collect();
            let writes: Vec<(u32, &[u8])> = (blocks.iter().zip(&images))
                .map(|(&b, i)| (b, &i[..]))
                .collect();
            let c = case;
            write_blocks_staged(ctx(), &pools.k, &pools.v, c.storage, g, &writes, cap)
                .expect("write");
            assert_words_eq(
                &format!("{what} cap {cap}"),
                &pools.words(),
                &with_images(g, &before, &writes),
            );
        }
    }
}

/// The runner's wrappers: a prompt's KV blocks read, restored into two other blocks, and a
/// decode step over a block table naming those gives the same logits bit for bit.
#[test]
fn runner_restores_blocks_that_decode_identically() {
    use wllm::batch::{LogitRows, StepBatch};
    use wllm::kv::{BlockPool, BlockTable};
    use wllm::{Generator, ModelOptions};
    for dtype in [WeightDType::F32, WeightDType::F16] {
        let mut opts = ModelOptions::new(common::fixtures().join("tiny-llama-gqa-public"));
        opts.dtype = dtype;
        opts.block_size = 4;
        let mut generator = Generator::load(ctx(), &opts, &mut |_, _| {}).expect("load");
        let runner = generator.runner_mut();
        let rc = *runner.runner_config();
        let g = runner.kv_block_geometry();
        assert_eq!(
            (g.block_size, g.num_blocks, g.dtype),
            (rc.block_size, rc.num_blocks, rc.kv_dtype)
        );
        assert!(g.layers > 0 && g.kv_dim > 0);
        let max_blocks = runner.max_blocks();
        let mut pool = BlockPool::new(rc.num_blocks, rc.block_size).expect("pool");
        let mut table = BlockTable::new();
        table.grow_to(&mut pool, 8).expect("blocks");
        let ids: Vec<u32> = table.blocks().iter().map(|b| b.0).collect();
        let last = rc.num_blocks as u32 - 1;
        let moved = [last, last - 1];
        assert!(!ids.contains(&moved[0]) && !ids.contains(&moved[1]));
        // The table's batch with its blocks renamed to `blocks` (slots written included).
        let step = |tokens: &[u32], pos: usize, blocks: &[u32]| {
            let mut b = StepBatch::new(max_blocks);
            b.push_sequence(tokens, pos, &table, rc.block_size, LogitRows::Last)
                .expect("batch");
            b.block_tables[..blocks.len()].copy_from_slice(blocks);
            let bs = rc.block_size as u32;
            for s in &mut b.slot_mapping {
                let i = ids
                    .iter()
                    .position(|&id| id == *s / bs)
                    .expect("a table block");
                *s = blocks[i] * bs + *s % bs;
            }
            b
        };
        let prompt = [3u32, 1, 4, 1, 5, 9];
        let first = runner
            .forward(&step(&prompt, 0, &ids))
            .expect("prefill")
            .token(0);
        let images = runner
            .read_kv_blocks(&ids)
            .expect("read")
            .wait(runner.context())
            .expect("images");
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|i| i.len() as u64 == g.image_bytes()));
        let writes: Vec<(u32, &[u8])> = moved
            .iter()
            .copied()
            .zip(images.iter().map(|i| &i[..]))
            .collect();
        runner.write_kv_blocks(&writes).expect("write");
        assert!(
            runner
                .write_kv_blocks(&[(rc.num_blocks as u32, &images[0])])
                .is_err()
        );
        assert!(runner.read_kv_blocks(&[rc.num_blocks as u32]).is_err());
        let there = runner
            .read_kv_blocks(&moved)
            .expect("read")
            .wait(runner.context());
        assert_images_eq("restored", &there.expect("images"), &images);

        let want = runner.forward(&step(&[first], 6, &ids)).expect("decode");
        let got = runner
            .forward(&step(&[first], 6, &moved))
            .expect("decode moved");
        let (want, got) = (want.row(0).expect("logits"), got.row(0).expect("logits"));
        assert_bits_eq(&format!("{dtype:?} decode over restored blocks"), got, want);
        table.release(&mut pool).expect("release");
    }
}
