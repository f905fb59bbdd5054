//! Quantized weights in a texture: the form `shaders/cpu/matmul_quant.wgsl` and
//! `shaders/embedding_quant.wgsl` read on CPU adapters (`W_TEXTURE`).
//!
//! llvmpipe fetches a texel for all SIMD lanes in one gather, but loads a storage-buffer word
//! lane by lane: reading a weight as 4-word texels costs ~1.4 ns per word there against ~4 ns
//! (lavapipe, 2 cores; `BENCHMARKS.md`). The texture holds the same words as
//! [`pack_quantized`](super::pack_quantized) in two planes so that every load is one aligned
//! texel (B = k / 32 k-blocks, N weight rows, QT = 1 texel of `qs` per 4-bit block, 2 per
//! 8-bit block):
//! - qs plane, texels `[0, QT·B·N)`: block (row n, k-block b)'s `qs` words (words 1.. of the
//!   packed block) in texels `(b·N + n)·QT ..+ QT`;
//! - scale plane, from texel `QT·B·N`: word 0 of block (n, b) (d, and m for 4-bit) is
//!   component `b % 4` of texel `(b / 4)·N + n`.
//!
//! Texel i sits at (i % [`TEXTURE_WIDTH`], i / [`TEXTURE_WIDTH`]) of an `Rgba32Uint` 2-D
//! texture, padded with zeros to whole rows.

use super::matmul_quant::{QUANT_BLOCK, QuantFormat};
use crate::gpu::{GpuContext, GpuError};

/// Texels per texture row (the shaders' `TEX_WIDTH`).
pub const TEXTURE_WIDTH: usize = 4096;

/// Where a weight matrix part lives on the GPU.
#[derive(Debug)]
pub enum WeightData {
    /// A storage buffer: dense weights, or quantized blocks as [`super::pack_quantized`] lays
    /// them out.
    Buffer(wgpu::Buffer),
    /// Quantized blocks as [`texture_planes`] lays them out.
    Texture(wgpu::TextureView),
}

/// `qs` texels per block.
fn qs_texels(format: QuantFormat) -> usize {
    (format.block_words() - 1) / 4
}

/// Texels of an (n, k) weight in the planes (before padding to whole rows).
pub fn texels_for(format: QuantFormat, n: usize, k: usize) -> usize {
    let blocks = k / QUANT_BLOCK;
    qs_texels(format) * blocks * n + blocks.div_ceil(4) * n
}

/// Weight rows of width `k` one texture holds on this adapter (its height limit).
pub fn max_rows_per_texture(ctx: &GpuContext, format: QuantFormat, k: usize) -> usize {
    let max_texels = TEXTURE_WIDTH * ctx.limits.max_texture_dimension_2d as usize;
    (max_texels / texels_for(format, 1, k).max(1)).max(1)
}

/// Rearranges [`super::pack_quantized`]'s words of an (n, k) weight into the two planes,
/// padded to whole texture rows (4 words per texel).
pub fn texture_planes(words: &[u32], format: QuantFormat, n: usize, k: usize) -> Vec<u32> {
    let blocks = k / QUANT_BLOCK;
    let bw = format.block_words();
    assert_eq!(words.len(), n * blocks * bw, "texture_planes: word count");
    let qs_words = (bw - 1) * blocks * n;
    let texels = texels_for(format, n, k);
    let mut out = vec![0u32; texels.div_ceil(TEXTURE_WIDTH) * TEXTURE_WIDTH * 4];
    let (qs, scales) = out.split_at_mut(qs_words);
    for (i, block) in words.chunks_exact(bw).enumerate() {
        // pack_quantized's block i is (row i % n, k-block i / n).
        let (b, row) = (i / n, i % n);
        qs[i * (bw - 1)..(i + 1) * (bw - 1)].copy_from_slice(&block[1..]);
        scales[((b / 4) * n + row) * 4 + b % 4] = block[0];
    }
    out
}

/// Uploads an (n, k) weight's [`super::pack_quantized`] words as a planes texture.
pub fn upload_texture(
    ctx: &GpuContext,
    name: &str,
    words: &[u32],
    format: QuantFormat,
    n: usize,
    k: usize,
) -> Result<wgpu::TextureView, GpuError> {
    if !format.texture_layout() {
        return Err(GpuError::Shape {
            op: "upload_texture",
            msg: format!("`{name}`: {format:?} weights have no texture layout"),
        });
    }
    let data = texture_planes(words, format, n, k);
    let height = data.len() / (4 * TEXTURE_WIDTH);
    if height > ctx.limits.max_texture_dimension_2d as usize {
        return Err(GpuError::Shape {
            op: "upload_texture",
            msg: format!(
                "`{name}`: {height} texture rows exceed the adapter's {}",
                ctx.limits.max_texture_dimension_2d
            ),
        });
    }
    Ok(texture_from_texels(ctx, name, &data, height as u32))
}

fn texture_from_texels(
    ctx: &GpuContext,
    name: &str,
    words: &[u32],
    height: u32,
) -> wgpu::TextureView {
    let size = wgpu::Extent3d {
        width: TEXTURE_WIDTH as u32,
        height,
        depth_or_array_layers: 1,
    };
    let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some(name),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    ctx.queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: &texture,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        bytemuck::cast_slice(words),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(TEXTURE_WIDTH as u32 * 16),
            rows_per_image: Some(height),
        },
        size,
    );
    texture.create_view(&wgpu::TextureViewDescriptor::default())
}

/// A one-row zero texture for the texture binding of pipelines that read weights from
/// buffers (naga counts the binding used even where their constants switch the read off).
pub fn unused_texture(ctx: &GpuContext) -> wgpu::TextureView {
    texture_from_texels(ctx, "unused weight texture", &[0; TEXTURE_WIDTH * 4], 1)
}

/// The texture binding's layout entry.
pub fn texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Uint,
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (n, k) weight back from the planes into pack_quantized's words.
    fn words_from_planes(planes: &[u32], format: QuantFormat, n: usize, k: usize) -> Vec<u32> {
        let blocks = k / QUANT_BLOCK;
        let bw = format.block_words();
        let qs_words = (bw - 1) * blocks * n;
        let mut out = vec![0u32; n * blocks * bw];
        for (i, block) in out.chunks_exact_mut(bw).enumerate() {
            let (b, row) = (i / n, i % n);
            block[1..].copy_from_slice(&planes[i * (bw - 1)..(i + 1) * (bw - 1)]);
            block[0] = planes[qs_words + ((b / 4) * n + row) * 4 + b % 4];
        }
        out
    }

    #[test]
    fn planes_round_trip_and_align() {
        for format in [QuantFormat::Q4, QuantFormat::Q8] {
            for (n, k) in [(1, 32), (3, 96), (5, 160), (7, 576)] {
                let words: Vec<u32> = (0..format.words_for(n, k) as u32)
                    .map(|i| i.wrapping_mul(2_654_435_761))
                    .collect();
                let planes = texture_planes(&words, format, n, k);
                assert_eq!(planes.len() % (TEXTURE_WIDTH * 4), 0);
                assert!(planes.len() >= texels_for(format, n, k) * 4);
                assert_eq!(words_from_planes(&planes, format, n, k), words);
            }
        }
    }
}
