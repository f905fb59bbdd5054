// Scale in place: x = x * c over the first len = rows * cols elements of x (Gemma's embedding
// scale sqrt(hidden_size) on the embedded rows). One f32 multiply per element, correctly
// rounded, so the result is the CPU's x * c bit for bit and never depends on the batch.
//
// Bindings:
//   0 x  f32 (len) read_write
// Immediates: Params below (c as f32 bits).
// Dispatch: ceil(len / 256) workgroups of 256 (x, then y when > 65535).

struct Params {
    len: u32,
    c: f32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    x[i] = x[i] * p.c;
}
