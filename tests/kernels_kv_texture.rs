//! The KV writes (kv_write, rope_kv_write) into pools held in textures (CPU adapters), against
//! the same kernels writing buffer pools (bit for bit) and the CPU references.
//!
//! Every texel starts as random words (never zeros), so a word written to the wrong texel, or
//! a slot the tokens do not own that changes, fails. Layouts with several blocks per texture row
//! (a small `max_dim`) scatter the tokens over many rows and columns.

mod common;

use common::plumbing::*;
use wllm::WeightDType::{self, F16, F32};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{KvWrite, RopeParams, rope};
use wllm::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout, slot_words};
use wllm::gpu::tensor::round_to;
use wllm::model::RopeStyle;

/// A texture pool of `layout` with random words in every texel (padding included, never
/// zeros), the same `slots` slots in a buffer pool, and those slots' words.
fn random_pools(
    rng: &mut Rng,
    layout: KvTextureLayout,
    slots: usize,
    kv_dim: usize,
    dtype: WeightDType,
) -> (KvPool, KvPool, Vec<u32>) {
    let storage = KvStorage::Texture(layout);
    let tex = KvPool::zeros(ctx(), "pool", storage, slots, kv_dim, dtype).expect("texture pool");
    let KvPool::Texture { texture, .. } = &tex else {
        panic!("a texture layout gave a buffer pool")
    };
    let texels = (layout.width() * layout.rows()) as usize;
    let words: Vec<u32> = (0..4 * texels).map(|_| rng.next_u64() as u32).collect();
    let data_layout = wgpu::TexelCopyBufferLayout {
        offset: 0,
        bytes_per_row: Some(layout.width() * 16),
        rows_per_image: Some(layout.rows()),
    };
    let (data, size) = (bytemuck::cast_slice(&words), texture.size());
    ctx()
        .queue
        .write_texture(texture.as_image_copy(), data, data_layout, size);
    let init = tex
        .read_words(ctx(), storage, slots, kv_dim, dtype)
        .expect("read back");
    let buf = KvPool::Buffer(u32s("pool", &init).buffer);
    (tex, buf, init)
}

/// A slot's elements as the pools store them: f32 bits, or f16 pairs (low half first).
fn encode_slot(vals: &[f32], dtype: WeightDType) -> Vec<u32> {
    match dtype {
        F32 => vals.iter().map(|v| v.to_bits()).collect(),
        F16 => vals
            .chunks(2)
            .map(|p| {
                let h = |v: f32| u32::from(half::f16::from_f32(v).to_bits());
                h(p[0]) | (h(p[1]) << 16)
            })
            .collect(),
    }
}

/// [`encode_slot`] undone.
fn decode_slot(words: &[u32], dtype: WeightDType) -> Vec<f32> {
    let h = |bits: u32| half::f16::from_bits(bits as u16).to_f32();
    match dtype {
        F32 => words.iter().map(|&w| f32::from_bits(w)).collect(),
        F16 => words
            .iter()
            .flat_map(|&w| [h(w & 0xffff), h(w >> 16)])
            .collect(),
    }
}

#[track_caller]
fn assert_words_eq(what: &str, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: failed at word {i}: {g:#010x} vs {w:#010x}");
    }
}

/// Texture pools: kv_write stores the reference's words at the texels of each token's slot,
/// leaves every other slot alone, and stores the same bits as into buffer pools. Layouts with
/// several blocks per row (a small `max_dim`) scatter the tokens over many rows and columns;
/// token counts straddle the 256-thread workgroups.
#[test]
fn kv_write_into_texture_pools() {
    // (dtype, kv_dim, block_size, num_blocks, max_dim, tokens)
    for (dtype, kv_dim, bs, nb, max_dim, t) in [
        (F16, 24usize, 4usize, 89usize, 40u32, 37usize), // 3 texels a slot, 3 blocks a row
        (F32, 12, 3, 50, 30, 101),                       // 3 texels, 2 blocks of 3 a row
        (F16, 48, 16, 7, 16384, 101),                    // 6 texels, a block a row
        (F32, 4, 1, 70, 64, 53),                         // 1 texel, 2 one-slot blocks a row
    ] {
        let what = format!("kv_write texture {dtype:?} kv_dim {kv_dim} max_dim {max_dim}");
        let layout = KvTextureLayout::new(nb, bs, kv_dim, dtype, max_dim).expect("fits");
        assert!(
            max_dim > 1000 || layout.row_slots() as usize > bs,
            "{what}: {layout:?}"
        );
        let storage = KvStorage::Texture(layout);
        let (slots, words) = (nb * bs, slot_words(kv_dim, dtype));
        let mut rng = Rng::new(kv_dim as u64 + 40);
        let q_dim = 2 * kv_dim + 1;
        let (row_stride, k_col) = (q_dim + 2 * kv_dim + 3, q_dim);
        let qkv = rng.normals(t * row_stride, 1.0);
        let mut all_slots: Vec<u32> = (0..slots as u32).collect();
        rng.shuffle(&mut all_slots);
        let slot_mapping = &all_slots[..t];
        let (k_tex, k_buf, k0) = random_pools(&mut rng, layout, slots, kv_dim, dtype);
        let (v_tex, v_buf, v0) = random_pools(&mut rng, layout, slots, kv_dim, dtype);

        let (mut want_k, mut want_v) = (k0, v0);
        for (tok, &s) in slot_mapping.iter().enumerate() {
            let src = tok * row_stride + k_col;
            let dst = s as usize * words..(s as usize + 1) * words;
            want_k[dst.clone()].copy_from_slice(&encode_slot(&qkv[src..src + kv_dim], dtype));
            let v = &qkv[src + kv_dim..src + 2 * kv_dim];
            want_v[dst].copy_from_slice(&encode_slot(v, dtype));
        }

        let qb = f32s("qkv", &qkv, &[t, row_stride]);
        let sb = u32s("slots", slot_mapping);
        let kt = KvWrite::new(ctx(), dtype, storage);
        let kb = KvWrite::new(ctx(), dtype, KvStorage::Buffer);
        let bg_t = kt.bind(ctx(), &qb.buffer, &sb.buffer, &k_tex, &v_tex);
        let bg_b = kb.bind(ctx(), &qb.buffer, &sb.buffer, &k_buf, &v_buf);
        run(|pass| {
            kt.encode(pass, &bg_t, t, row_stride, k_col, kv_dim);
            kb.encode(pass, &bg_b, t, row_stride, k_col, kv_dim);
        });
        let read = |p: &KvPool, s| p.read_words(ctx(), s, slots, kv_dim, dtype).expect("read");
        let (got_k, got_v) = (read(&k_tex, storage), read(&v_tex, storage));
        assert_words_eq(&format!("{what} K"), &got_k, &want_k);
        assert_words_eq(&format!("{what} V"), &got_v, &want_v);
        let buffer = KvStorage::Buffer;
        assert_words_eq(
            &format!("{what} K vs buffer"),
            &got_k,
            &read(&k_buf, buffer),
        );
        assert_words_eq(
            &format!("{what} V vs buffer"),
            &got_v,
            &read(&v_buf, buffer),
        );
    }
}

/// Texture pools: rope_kv_write stores the same bits as into buffer pools (and as close to
/// the reference), Q the same too, and no slot but the tokens' changes. head_dim 6 puts some
/// texels' elements (8 in f16, 4 in f32) in two heads; 2 KV heads of 4 make an f16 slot one
/// texel.
#[test]
fn rope_kv_write_into_texture_pools() {
    use wllm::gpu::kernels::{RopeKvWrite, rope_kv_write};
    let (t, bs, max_positions) = (41usize, 4usize, 100usize);
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        for (heads, kv_heads, head_dim) in
            [(6usize, 2usize, 16usize), (9, 3, 64), (4, 4, 6), (5, 2, 4)]
        {
            for dtype in [F32, F16] {
                let kv_dim = kv_heads * head_dim;
                let slot_texels = slot_words(kv_dim, dtype) as u32 / 4;
                // Interleaved: 3 blocks a row over many rows; Half: a block a row.
                let (max_dim, nb) = match style {
                    RopeStyle::Interleaved => (3 * bs as u32 * slot_texels, 0),
                    RopeStyle::Half => (16384, 13),
                };
                let nb = if nb == 0 {
                    2 * max_dim as usize + 1
                } else {
                    nb
                };
                let what = format!(
                    "rope_kv_write texture {style:?} {heads}/{kv_heads}×{head_dim} {dtype:?}"
                );
                let layout = KvTextureLayout::new(nb, bs, kv_dim, dtype, max_dim).expect("fits");
                let storage = KvStorage::Texture(layout);
                let slots = nb * bs;
                let mut rng = Rng::new(head_dim as u64 + 70);
                let q_dim = heads * head_dim;
                let row_stride = q_dim + 2 * kv_dim + 3;
                let mut positions: Vec<u32> = (0..t).map(|_| rng.below(max_positions)).collect();
                (positions[0], positions[1]) = (0, max_positions as u32 - 1);
                let mut all_slots: Vec<u32> = (0..slots as u32).collect();
                rng.shuffle(&mut all_slots);
                let slot_mapping = &all_slots[..t];
                let cos_sin = rope::cos_sin_table(max_positions, head_dim, 10000.0);
                let qkv = rng.normals(t * row_stride, 1.0);
                let (k_tex, k_buf, k0) = random_pools(&mut rng, layout, slots, kv_dim, dtype);
                let (v_tex, v_buf, v0) = random_pools(&mut rng, layout, slots, kv_dim, dtype);
                let p = RopeParams {
                    num_tokens: t,
                    row_stride,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim,
                    max_positions,
                    style,
                };
                let pb = u32s("positions", &positions);
                let sb = u32s("slots", slot_mapping);
                let cb = f32s("cos_sin", &cos_sin, &[max_positions, head_dim / 2, 2]);
                let (qb_t, qb_b) = (
                    f32s("qkv", &qkv, &[t, row_stride]),
                    f32s("qkv", &qkv, &[t, row_stride]),
                );
                let kt = RopeKvWrite::new(ctx(), dtype, head_dim, storage);
                let kb = RopeKvWrite::new(ctx(), dtype, head_dim, KvStorage::Buffer);
                let bind = |k: &RopeKvWrite, q: &GpuTensor, kc, vc| {
                    k.bind(ctx(), &q.buffer, &pb.buffer, &cb.buffer, &sb.buffer, kc, vc)
                };
                let bg_t = bind(&kt, &qb_t, &k_tex, &v_tex);
                let bg_b = bind(&kb, &qb_b, &k_buf, &v_buf);
                run(|pass| {
                    kt.encode(pass, &bg_t, &p);
                    kb.encode(pass, &bg_b, &p);
                });
                let read_pool =
                    |p: &KvPool, s| p.read_words(ctx(), s, slots, kv_dim, dtype).expect("read");
                let (got_k, got_v) = (read_pool(&k_tex, storage), read_pool(&v_tex, storage));
                let buffer = KvStorage::Buffer;
                assert_words_eq(
                    &format!("{what} K vs buffer"),
                    &got_k,
                    &read_pool(&k_buf, buffer),
                );
                assert_words_eq(
                    &format!("{what} V vs buffer"),
                    &got_v,
                    &read_pool(&v_buf, buffer),
                );
                assert_bits_eq(&format!("{what} qkv vs buffer"), &read(&qb_t), &read(&qb_b));

                // Against the reference: the tokens' slots hold its K and V, the others their
                // words as they were.
                let (mut want_q, mut want_k, mut want_v) = (
                    qkv.clone(),
                    vec![0.0; slots * kv_dim],
                    vec![0.0; slots * kv_dim],
                );
                rope_kv_write::reference(
                    &mut want_q,
                    &positions,
                    &cos_sin,
                    slot_mapping,
                    &p,
                    &mut want_k,
                    &mut want_v,
                );
                let words = slot_words(kv_dim, dtype);
                let cache_tol = if dtype == F16 { 2e-3 } else { TOL };
                let mut written = vec![false; slots];
                for &s in slot_mapping {
                    let (s, w) = (s as usize, s as usize * words..(s as usize + 1) * words);
                    let e = s * kv_dim..(s + 1) * kv_dim;
                    written[s] = true;
                    let want_k = round_to(&want_k[e.clone()], dtype);
                    let want_v = round_to(&want_v[e], dtype);
                    let slot = format!("{what} slot {s}");
                    assert_close(
                        &format!("{slot} K"),
                        &decode_slot(&got_k[w.clone()], dtype),
                        &want_k,
                        cache_tol,
                    );
                    assert_close(
                        &format!("{slot} V"),
                        &decode_slot(&got_v[w], dtype),
                        &want_v,
                        0.0,
                    );
                }
                for s in (0..slots).filter(|&s| !written[s]) {
                    let w = s * words..(s + 1) * words;
                    assert_words_eq(
                        &format!("{what} K slot {s} untouched"),
                        &got_k[w.clone()],
                        &k0[w.clone()],
                    );
                    assert_words_eq(
                        &format!("{what} V slot {s} untouched"),
                        &got_v[w.clone()],
                        &v0[w],
                    );
                }
                assert_close(&format!("{what} qkv"), &read(&qb_t), &want_q, TOL);
            }
        }
    }
}
