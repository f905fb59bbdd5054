// Embedding lookup from a quantized table: x[t, d] = E[token_ids[t] - first_id, d] for the
// tokens whose id lies in [first_id, first_id + vocab); other rows are left untouched, so a
// table split across buffers by rows is one dispatch per part.
// E (vocab rows × dim, dim a multiple of 32) is stored exactly as matmul_quant.wgsl stores a
// weight (block (row n, k-block b) at word (b * vocab + n) * BW), so a tied LM head and the
// embedding share one copy:
//   4-bit (Q8 = false, BW = 5): word 0 = d f16 | m f16 << 16, words 1..5 = 16 nibble bytes
//     (byte j: low nibble = element j, high nibble = element j + 16); value = d * q + m.
//   8-bit (Q8 = true, BW = 9): word 0 = d f16, words 1..9 = 32 int8; value = d * q.
// FORMAT != 0: the other GGUF formats in their own blocks (shaders/lib/quant_blocks.wgsl,
// appended; storage buffer only), a row dequantized exactly as the loader does.
// Quantized models here are Llama-style, so there is no position table.
// W_TEXTURE: the table is in w_texture as the two planes matmul_quant.wgsl's W_TEXTURE reads
// (qs plane: block i = b * vocab + n in texels i * QT .. + QT; scale plane after it: block
// (n, b)'s word 0 in component b % 4 of texel (b / 4) * vocab + n), and `table` is unused.
//
// Bindings:
//   0 token_ids  u32 (T)
//   1 table      u32 words of the blocks above
//   2 x          vec4<f32> (T, dim / 4) output
//   3 w_texture  (W_TEXTURE only) rgba32uint texels, row width TEX_WIDTH
// Immediates: Params below.
// Dispatch: ceil(T * dim / 4 / 256) workgroups of 256, spread over x and y (x ≤ 65535);
// one thread per 4 consecutive elements of a row.
// Ids are checked against the whole vocabulary on the CPU before dispatch.

override Q8: bool = false;
// ggml type id of blocks read through shaders/lib/quant_blocks.wgsl; 0: the Q4/Q8 layout.
override FORMAT: u32 = 0u;
override W_TEXTURE: bool = false;
const TEX_WIDTH: u32 = 4096u;

struct Params {
    num_tokens: u32,
    dim: u32,
    vocab: u32,
    first_id: u32,
}

@group(0) @binding(0) var<storage, read> token_ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(3) var w_texture: texture_2d<u32>;
var<immediate> p: Params;

// Word i of the table, for quant_blocks.wgsl.
fn quant_word(i: u32) -> u32 {
    return table[i];
}

fn texel(i: u32) -> vec4<u32> {
    return textureLoad(w_texture, vec2<u32>(i % TEX_WIDTH, i / TEX_WIDTH), 0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    let pieces = p.dim / 4u;
    if i >= p.num_tokens * pieces {
        return;
    }
    let t = i / pieces;
    let j = i % pieces;
    let tok = token_ids[t];
    if tok < p.first_id || tok - p.first_id >= p.vocab {
        return;
    }
    let row = tok - p.first_id;
    let b = j / 8u;
    let block = b * p.vocab + row;
    let c = j % 8u;
    if FORMAT != 0u {
        x[i] = quant_vec4(unit_base(row, b, p.vocab), b % unit_subs(), c);
        return;
    }
    if W_TEXTURE {
        let qt = select(1u, 2u, Q8);
        let plane = qt * (p.dim / 32u) * p.vocab;
        let head = texel(plane + (b / 4u) * p.vocab + row)[b % 4u];
        if Q8 {
            let q = texel(block * 2u + c / 4u)[c % 4u];
            x[i] = vec4<f32>(unpack2x16float(head).x) * vec4<f32>(unpack4xI8(q));
        } else {
            let dm = unpack2x16float(head);
            let q = (texel(block)[c & 3u] >> ((c >> 2u) * 4u)) & 0x0f0f0f0fu;
            x[i] = fma(vec4<f32>(dm.x), vec4<f32>(unpack4xU8(q)), vec4<f32>(dm.y));
        }
        return;
    }
    if Q8 {
        let base = block * 9u;
        let d = unpack2x16float(table[base]).x;
        x[i] = vec4<f32>(d) * vec4<f32>(unpack4xI8(table[base + 1u + c]));
    } else {
        let base = block * 5u;
        let dm = unpack2x16float(table[base]);
        let q = (table[base + 1u + (c & 3u)] >> ((c >> 2u) * 4u)) & 0x0f0f0f0fu;
        x[i] = fma(vec4<f32>(dm.x), vec4<f32>(unpack4xU8(q)), vec4<f32>(dm.y));
    }
}
