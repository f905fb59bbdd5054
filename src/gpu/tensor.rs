//! GPU buffers with a shape and an element type.
//!
//! Weights and the KV cache are stored either as f32 or as f16 packed two to a `u32`
//! (element 2i in the low half). Kernels read packed f16 with `unpack2x16float`, which every
//! WGSL implementation has, so f16 storage works even where `SHADER_F16` is missing; all
//! arithmetic and the residual stream stay f32.

use wgpu::util::DeviceExt;

use super::{GpuContext, GpuError};

/// Storage type of weights and KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WeightDType {
    F32,
    F16,
}

impl WeightDType {
    pub fn bytes_per_elem(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::F16 => 2,
        }
    }

    /// The `W_F16`-style override constant value for kernels.
    pub fn is_f16(self) -> f64 {
        match self {
            WeightDType::F32 => 0.0,
            WeightDType::F16 => 1.0,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(WeightDType::F32),
            "f16" | "float16" | "half" => Some(WeightDType::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDType::F32 => "f32",
            WeightDType::F16 => "f16",
        }
    }
}

/// Host f32 values in the given storage type, as the `u32` words a kernel reads.
/// f16 packs pairs (an odd count gets a zero pad).
pub fn encode_words(data: &[f32], dtype: WeightDType) -> Vec<u32> {
    match dtype {
        WeightDType::F32 => data.iter().map(|v| v.to_bits()).collect(),
        WeightDType::F16 => data
            .chunks(2)
            .map(|c| {
                let lo = half::f16::from_f32(c[0]).to_bits() as u32;
                let hi = c.get(1).map_or(0, |v| half::f16::from_f32(*v).to_bits()) as u32;
                lo | (hi << 16)
            })
            .collect(),
    }
}

/// Rounds every value the way storing it in `dtype` would (for CPU references).
pub fn round_to(data: &[f32], dtype: WeightDType) -> Vec<f32> {
    match dtype {
        WeightDType::F32 => data.to_vec(),
        WeightDType::F16 => data
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect(),
    }
}

/// A storage buffer holding a row-major tensor.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    /// Row-major, outermost first.
    pub shape: Vec<usize>,
    pub dtype: WeightDType,
}

impl GpuTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Uploads `data` (row-major f32, `shape`) stored as `dtype`.
    pub fn from_f32(
        ctx: &GpuContext,
        name: &str,
        data: &[f32],
        shape: &[usize],
        dtype: WeightDType,
    ) -> Result<GpuTensor, GpuError> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(GpuError::Shape {
                op: "upload",
                msg: format!(
                    "{name}: shape {shape:?} has {numel} elements, data {}",
                    data.len()
                ),
            });
        }
        let words = encode_words(data, dtype);
        Self::from_words(ctx, name, &words, shape, dtype)
    }

    /// Uploads already-encoded words (see [`encode_words`]).
    pub fn from_words(
        ctx: &GpuContext,
        name: &str,
        words: &[u32],
        shape: &[usize],
        dtype: WeightDType,
    ) -> Result<GpuTensor, GpuError> {
        let bytes = (words.len().max(1) * 4) as u64;
        check_binding(ctx, name, bytes)?;
        let contents: &[u8] = if words.is_empty() {
            &[0u8; 4]
        } else {
            bytemuck::cast_slice(words)
        };
        let buffer = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(name),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        Ok(GpuTensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A zero-filled f32/f16 tensor (activations, KV pool).
    pub fn zeros(
        ctx: &GpuContext,
        name: &str,
        shape: &[usize],
        dtype: WeightDType,
    ) -> Result<GpuTensor, GpuError> {
        let numel: usize = shape.iter().product();
        let words = match dtype {
            WeightDType::F32 => numel,
            WeightDType::F16 => numel.div_ceil(2),
        };
        let buffer = zeroed_buffer(ctx, name, (words.max(1) * 4) as u64, false)?;
        Ok(GpuTensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// An f32 (rows, k) activation that matmuls read, made bindable as the quantized matmul's
    /// x window too: `UNIFORM` usage and room for a window past the last row
    /// ([`crate::gpu::kernels::MatmulQuant::bind`]). `data` fills the start; empty for zeros.
    pub fn matmul_input(
        ctx: &GpuContext,
        name: &str,
        data: &[f32],
        rows: usize,
        k: usize,
    ) -> Result<GpuTensor, GpuError> {
        let bytes = crate::gpu::kernels::MatmulQuant::x_buffer_bytes(rows, k);
        let buffer = zeroed_buffer(ctx, name, bytes, true)?;
        if !data.is_empty() {
            ctx.queue.write_buffer(
                &buffer,
                0,
                bytemuck::cast_slice(&data[..data.len().min(rows * k)]),
            );
        }
        Ok(GpuTensor {
            buffer,
            shape: vec![rows, k],
            dtype: WeightDType::F32,
        })
    }

    /// Reads the tensor back as f32 (blocking; for tests and debugging, never the hot path).
    pub fn read_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>, GpuError> {
        let words = read_words(ctx, &self.buffer)?;
        let n = self.numel();
        Ok(match self.dtype {
            WeightDType::F32 => words.iter().take(n).map(|w| f32::from_bits(*w)).collect(),
            WeightDType::F16 => (0..n)
                .map(|i| {
                    let w = words[i / 2];
                    let bits = if i % 2 == 0 { w & 0xffff } else { w >> 16 };
                    half::f16::from_bits(bits as u16).to_f32()
                })
                .collect(),
        })
    }
}

/// A zero-initialised storage buffer of `bytes` (copyable both ways), also bindable as a
/// uniform buffer when `uniform`.
fn zeroed_buffer(
    ctx: &GpuContext,
    name: &str,
    bytes: u64,
    uniform: bool,
) -> Result<wgpu::Buffer, GpuError> {
    check_binding(ctx, name, bytes)?;
    let mut usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    if uniform {
        usage |= wgpu::BufferUsages::UNIFORM;
    }
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: bytes,
        usage,
        mapped_at_creation: false,
    }))
}

fn check_binding(ctx: &GpuContext, name: &str, bytes: u64) -> Result<(), GpuError> {
    let limit = ctx.max_binding_bytes();
    if bytes > limit {
        return Err(GpuError::TooLarge {
            name: name.to_string(),
            bytes,
            limit,
        });
    }
    Ok(())
}

/// Blocking copy of a whole buffer to the host as u32 words.
pub fn read_words(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<u32>, GpuError> {
    let size = buffer.size();
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    ctx.queue.submit([enc.finish()]);
    map_and_read(ctx, &staging, size)
}

/// Maps a MAP_READ buffer, copies `size` bytes out as words, unmaps.
pub fn map_and_read(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
) -> Result<Vec<u32>, GpuError> {
    map_and_read_after(ctx, staging, size, None)
}

/// [`map_and_read`] once submission `after` is done (the latest submission when `None`),
/// without waiting for anything submitted after it.
pub fn map_and_read_after(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u32>, GpuError> {
    let slice = staging.slice(0..size);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: after,
            timeout: None,
        })
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    rx.recv()
        .map_err(|e| GpuError::Readback(e.to_string()))?
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    let out = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(format!("{e:?}")))?;
        bytemuck::cast_slice::<u8, u32>(&view).to_vec()
    };
    staging.unmap();
    Ok(out)
}
