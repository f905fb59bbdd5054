//! The block-copy kernel (copy-on-write of KV blocks) against its CPU reference.
//!
//! Pools hold random words (never zeros), block sizes 1, 4 and 16 with kv_dim 30 (an f16 block
//! of block size 1 is 15 words, an odd count) and 192, in both word layouts. Pairs copy between
//! non-adjacent blocks, to and from the first and last block, and one source to two
//! destinations (two sequences forked from one). Every word is compared exactly, and every
//! block that is not a destination must come back unchanged. Pools kept in textures (CPU
//! adapters) copy blocks with texture copies instead: the same reference, the same words.

mod common;

use wllm::WeightDType::{self, F16, F32};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{CopyBlocks, copy_blocks};
use wllm::gpu::kv_pool::{self, KvPool, KvStorage, KvTextureLayout};
use wllm::gpu::tensor::read_words;

/// The library's SplitMix64 with the helpers the tests need.
struct Rng(wllm::sampling::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(wllm::sampling::Rng::new(seed ^ 0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Values in [-4, 4), as the pool's element type stores them.
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0)
            .collect()
    }
}

fn ctx() -> &'static wllm::GpuContext {
    common::gpu()
}

/// One layer's pool of `num_blocks` blocks (block_size, kv_dim), random contents.
fn pool(name: &str, rng: &mut Rng, slots: usize, kv_dim: usize, dtype: WeightDType) -> GpuTensor {
    let data = rng.values(slots * kv_dim);
    GpuTensor::from_f32(ctx(), name, &data, &[slots, kv_dim], dtype)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn words(t: &GpuTensor) -> Vec<u32> {
    read_words(ctx(), &t.buffer).expect("read back")
}

/// Runs the kernel on the pairs and returns (K, V) before and after, as words.
fn copy_on_gpu(
    pairs: &[[u32; 2]],
    num_blocks: usize,
    block_size: usize,
    kv_dim: usize,
    dtype: WeightDType,
    seed: u64,
) -> [(Vec<u32>, Vec<u32>); 2] {
    let mut rng = Rng::new(seed);
    let slots = num_blocks * block_size;
    let (kc, vc) = (
        pool("k_cache", &mut rng, slots, kv_dim, dtype),
        pool("v_cache", &mut rng, slots, kv_dim, dtype),
    );
    let flat: Vec<u32> = pairs.iter().flatten().copied().collect();
    let pb = GpuTensor::from_words(ctx(), "pairs", &flat, &[pairs.len(), 2], F32)
        .unwrap_or_else(|e| panic!("pairs: {e}"));
    let before = (words(&kc), words(&vc));

    let k = CopyBlocks::new(ctx());
    let bg = k.bind(ctx(), &pb.buffer, &kc.buffer, &vc.buffer);
    let wpb = copy_blocks::words_per_block(block_size, kv_dim, dtype);
    common::plumbing::run(|pass| k.encode(pass, &bg, pairs.len(), wpb));
    [before, (words(&kc), words(&vc))]
}

#[track_caller]
fn assert_words_eq(what: &str, gpu: &[u32], cpu: &[u32], words_per_block: usize) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g == c,
            "{what}: failed at word {i} (block {}): {g:#010x} vs {c:#010x}",
            i / words_per_block
        );
    }
}

/// Checks one configuration: exact equality with the reference, and untouched blocks unchanged.
fn check(pairs: &[[u32; 2]], num_blocks: usize, block_size: usize, kv_dim: usize, seed: u64) {
    for dtype in [F32, F16] {
        let what = format!("copy_blocks {dtype:?} block_size {block_size} kv_dim {kv_dim}");
        copy_blocks::check_pairs(pairs, num_blocks).unwrap_or_else(|e| panic!("{what}: {e}"));
        let wpb = copy_blocks::words_per_block(block_size, kv_dim, dtype);
        let [(k0, v0), (k1, v1)] = copy_on_gpu(pairs, num_blocks, block_size, kv_dim, dtype, seed);
        assert_eq!(k0.len(), num_blocks * wpb, "{what}: pool words");
        // Random contents: no two blocks equal, so a copy from the wrong block shows.
        let distinct: std::collections::HashSet<&[u32]> =
            k0.chunks(wpb).chain(v0.chunks(wpb)).collect();
        assert_eq!(distinct.len(), 2 * num_blocks, "{what}: test data");

        let (mut want_k, mut want_v) = (k0.clone(), v0.clone());
        copy_blocks::reference(pairs, wpb, &mut want_k, &mut want_v);
        assert_words_eq(&format!("{what} K"), &k1, &want_k, wpb);
        assert_words_eq(&format!("{what} V"), &v1, &want_v, wpb);

        for b in 0..num_blocks {
            let r = b * wpb..(b + 1) * wpb;
            match pairs.iter().find(|[_, d]| *d as usize == b) {
                Some(&[s, _]) => {
                    let s = s as usize * wpb..(s as usize + 1) * wpb;
                    assert!(
                        k1[r.clone()] == k0[s.clone()],
                        "{what}: K block {b} not copied"
                    );
                    assert!(v1[r] == v0[s], "{what}: V block {b} not copied");
                }
                None => {
                    assert!(
                        k1[r.clone()] == k0[r.clone()],
                        "{what}: K block {b} changed"
                    );
                    assert!(v1[r.clone()] == v0[r], "{what}: V block {b} changed");
                }
            }
        }
    }
}

#[test]
fn copies_blocks_exactly_and_leaves_the_others_alone() {
    // 13 blocks; sources 0, 3, 7 and 12; 3 goes to two forks; destinations 1 and 11 sit next
    // to untouched blocks, 5 before a source.
    let pairs = [[3, 9], [0, 5], [12, 1], [7, 11], [3, 2]];
    let mut seed = 1;
    for block_size in [1, 4, 16] {
        for kv_dim in [30, 192] {
            check(&pairs, 13, block_size, kv_dim, seed);
            seed += 1;
        }
    }
}

#[test]
fn one_pair_and_no_pairs() {
    check(&[[1, 0]], 2, 16, 30, 7);
    // Zero pairs: no dispatch, nothing changes.
    check(&[], 3, 4, 30, 8);
}

#[test]
fn pairs_past_the_first_grid_row_are_copied() {
    // More than 65535 workgroups puts the grid in 2-D. A long run of one repeated pair (equal
    // writes) fills the first 65535 * 256 threads; the distinct pairs after it are only
    // reached through workgroup_id.y. f16, block 16, kv_dim 30: 240 words per block.
    let (block_size, kv_dim) = (16, 30);
    let wpb = copy_blocks::words_per_block(block_size, kv_dim, F16);
    let filler = (65535 * 256usize).div_ceil(wpb) + 3;
    let mut pairs = vec![[0u32, 1u32]; filler];
    pairs.extend([[2, 3], [2, 5], [4, 6], [0, 7]]);
    copy_blocks::check_pairs(&pairs, 8).expect("valid pairs");
    let [(k0, v0), (k1, v1)] = copy_on_gpu(&pairs, 8, block_size, kv_dim, F16, 9);
    let (mut want_k, mut want_v) = (k0.clone(), v0.clone());
    copy_blocks::reference(&pairs, wpb, &mut want_k, &mut want_v);
    assert_ne!(want_k, k0, "the pairs change the pool");
    assert_words_eq("copy_blocks 2-D K", &k1, &want_k, wpb);
    assert_words_eq("copy_blocks 2-D V", &v1, &want_v, wpb);
}

#[test]
fn check_pairs_rejects_racy_or_out_of_range_pairs() {
    assert!(copy_blocks::check_pairs(&[[0, 1], [0, 2], [0, 1]], 3).is_ok());
    // Block 4 does not exist in a pool of 4.
    assert!(copy_blocks::check_pairs(&[[0, 4]], 4).is_err());
    assert!(copy_blocks::check_pairs(&[[4, 0]], 4).is_err());
    // Two sources for one destination.
    assert!(copy_blocks::check_pairs(&[[0, 2], [1, 2]], 4).is_err());
    // A destination read by another pair (chained copies).
    assert!(copy_blocks::check_pairs(&[[0, 1], [1, 2]], 4).is_err());
    assert!(copy_blocks::check_pairs(&[[1, 2], [0, 1]], 4).is_err());
}

#[test]
fn words_per_block_counts_f16_pairs() {
    // 16 tokens of 192: 3072 elements = 1536 f16 words or 3072 f32 words; 1 token of 30 in f16: 15.
    assert_eq!(copy_blocks::words_per_block(16, 192, F16), 1536);
    assert_eq!(copy_blocks::words_per_block(16, 192, F32), 3072);
    assert_eq!(copy_blocks::words_per_block(1, 30, F16), 15);
}

#[test]
fn texture_pools_copy_blocks_like_the_kernel() {
    // 13 blocks, 1 to 3 of them per texture row (the last row part empty); slots of 1 texel
    // (f16, kv_dim 8), 3 (f32, kv_dim 12) and 24 (f16, kv_dim 192, SmolLM2).
    let pairs = [[3, 9], [0, 5], [12, 1], [7, 11], [3, 2]];
    let num_blocks: usize = 13;
    let mut seed = 20;
    for (block_size, kv_dim, dtype) in [(1, 8, F16), (4, 12, F32), (16, 192, F16)] {
        for blocks_per_row in [1, 2, 3] {
            seed += 1;
            let what = format!(
                "texture copy {dtype:?} block_size {block_size} kv_dim {kv_dim}, {blocks_per_row} blocks per row"
            );
            let layout = KvTextureLayout::with_blocks_per_row(
                num_blocks,
                block_size,
                kv_dim,
                dtype,
                blocks_per_row,
                ctx().limits.max_texture_dimension_2d,
            )
            .expect("slots of whole texels");
            let words = kv_pool::slot_words(kv_dim, dtype);
            let storage = KvStorage::Texture(layout);
            let slots = num_blocks * block_size;
            let mut rng = Rng::new(seed);
            let mut pools = Vec::new();
            let mut before = Vec::new();
            for name in ["k_cache", "v_cache"] {
                let pool = KvPool::zeros(ctx(), name, storage, slots, kv_dim, dtype)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let w: Vec<u32> = (0..slots * words).map(|_| rng.next_u64() as u32).collect();
                pool.write_words(ctx(), storage, kv_dim, dtype, &w)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                before.push(w);
                pools.push(pool);
            }
            let mut enc = ctx()
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let textures: Vec<&wgpu::Texture> = pools
                .iter()
                .map(|pool| match pool {
                    KvPool::Texture { texture, .. } => texture,
                    KvPool::Buffer(_) => panic!("{what}: a texture pool"),
                })
                .collect();
            let bs = block_size as u32;
            kv_pool::copy_texture_blocks(ctx(), &mut enc, &textures, layout, bs, &pairs);
            ctx().queue.submit([enc.finish()]);
            let after: Vec<Vec<u32>> = pools
                .iter()
                .map(|p| {
                    p.read_words(ctx(), storage, slots, kv_dim, dtype)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                })
                .collect();
            let wpb = copy_blocks::words_per_block(block_size, kv_dim, dtype);
            let (mut want_k, mut want_v) = (before[0].clone(), before[1].clone());
            copy_blocks::reference(&pairs, wpb, &mut want_k, &mut want_v);
            assert_ne!(want_k, before[0], "{what}: the pairs change the pool");
            assert_words_eq(&format!("{what} K"), &after[0], &want_k, wpb);
            assert_words_eq(&format!("{what} V"), &after[1], &want_v, wpb);
        }
    }
}
