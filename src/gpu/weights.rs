//! Weight matrices on the GPU: dense (f32/f16 in the matmul's layout) or GGUF quantized
//! blocks (dequantized in registers by the matmul), split by rows where one binding cannot
//! hold them.

use crate::gpu::kernels::matmul::pack_weight;
use crate::gpu::kernels::matmul_quant::{QuantFormat, pack_quantized, row_bytes};
use crate::gpu::kernels::quant_texture::{WeightData, max_rows_per_texture, upload_texture};
use crate::gpu::{GpuContext, GpuError, GpuTensor, Placement, WeightDType};
use crate::loader::TensorDType;

/// How a matrix's elements are stored on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixFormat {
    /// f32 or f16 in the dense matmul's transposed layout ([`pack_weight`]).
    Dense(WeightDType),
    /// GGUF blocks in [`pack_quantized`]'s layout.
    Quant(QuantFormat),
}

/// Rows `first_row..first_row + rows` of a matrix, in one buffer or texture.
#[derive(Debug)]
pub struct MatrixPart {
    pub first_row: usize,
    pub rows: usize,
    /// Parts of one matrix may differ in format: a stack of GGUF tensors of several quantized
    /// types (Q4_K_M's attention Q and K in Q4_K, V in Q6_K) keeps each tensor's own.
    pub format: MatrixFormat,
    pub data: WeightData,
}

/// A weight matrix (rows = out_features), possibly split by rows across buffers.
#[derive(Debug)]
pub struct GpuMatrix {
    pub rows: usize,
    pub cols: usize,
    /// In row order, at least one.
    pub parts: Vec<MatrixPart>,
    /// The same rows on the host, as the kernels compute with them, when the loader was asked
    /// to keep them (`wllm check --model`'s CPU forward); empty otherwise.
    pub host: Vec<HostRows>,
}

/// Consecutive rows of a weight matrix in host memory: GGUF blocks as the file has them, or
/// dense values in the GPU's storage type (f16 weights rounded as uploaded).
#[derive(Debug, Clone)]
pub struct HostRows {
    pub dtype: TensorDType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl HostRows {
    /// Dense f32 rows in `dtype`'s storage (f16 rounds each value, as the upload does).
    pub fn dense(data: &[f32], rows: usize, cols: usize, dtype: WeightDType) -> HostRows {
        let (dtype, data) = match dtype {
            WeightDType::F32 => (TensorDType::F32, bytemuck::cast_slice(data).to_vec()),
            WeightDType::F16 => (
                TensorDType::F16,
                data.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        };
        HostRows {
            dtype,
            rows,
            cols,
            data,
        }
    }

    /// Row `r` as f32 (GGUF blocks dequantized by the loader's reference).
    pub fn row(&self, r: usize) -> Result<Vec<f32>, String> {
        let rb = crate::gpu::kernels::matmul_quant::row_bytes(self.dtype, self.cols);
        let bytes = self
            .data
            .get(r * rb..(r + 1) * rb)
            .ok_or_else(|| format!("row {r} of {} kept on the host", self.rows))?;
        crate::loader::dequant::to_f32(self.dtype, bytes, self.cols)
    }
}

impl GpuMatrix {
    /// Whether every part is quantized (the matrix then runs on the quantized matmuls only).
    pub fn is_quantized(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p.format, MatrixFormat::Quant(_)))
    }

    /// The one format of all parts, if they share one.
    pub fn single_format(&self) -> Option<MatrixFormat> {
        let first = self.parts.first()?.format;
        self.parts
            .iter()
            .all(|p| p.format == first)
            .then_some(first)
    }

    /// The quantized formats among the parts, each once.
    pub fn quant_formats(&self) -> Vec<QuantFormat> {
        let mut out = Vec::new();
        for p in &self.parts {
            if let MatrixFormat::Quant(f) = p.format {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Matrices of one width stacked by rows (each keeps its parts and their formats).
    pub fn stack(name: &str, matrices: Vec<GpuMatrix>) -> Result<GpuMatrix, GpuError> {
        let cols = matrices.first().map_or(0, |m| m.cols);
        if matrices.is_empty() || matrices.iter().any(|m| m.cols != cols) {
            return Err(GpuError::Shape {
                op: "stack",
                msg: format!("`{name}`: nothing to stack, or widths differ"),
            });
        }
        let mut rows = 0;
        let mut parts = Vec::new();
        let keep_host = matrices.iter().all(|m| !m.host.is_empty());
        let mut host = Vec::new();
        for m in matrices {
            if keep_host {
                host.extend(m.host);
            }
            for p in m.parts {
                parts.push(MatrixPart {
                    first_row: rows + p.first_row,
                    ..p
                });
            }
            rows += m.rows;
        }
        Ok(GpuMatrix {
            rows,
            cols,
            parts,
            host,
        })
    }

    /// Uploads GGUF quantized rows (`raw`: `rows` rows of `dtype` blocks, row-major) without
    /// dequantizing them: into textures where the device profile says (the CPU kernel forms)
    /// and the format has texture planes (Q4, Q8), else into storage buffers.
    pub fn upload_quantized(
        ctx: &GpuContext,
        name: &str,
        raw: &[u8],
        dtype: TensorDType,
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix, GpuError> {
        let format = QuantFormat::of(dtype).ok_or_else(|| GpuError::Shape {
            op: "upload_quantized",
            msg: format!("`{name}`: {dtype:?} is not a quantized type"),
        })?;
        let rb = row_bytes(dtype, cols);
        let in_texture = ctx.profile.quant_weights == Placement::Texture && format.texture_layout();
        let max_rows = if in_texture {
            max_rows_per_texture(ctx, format, cols)
        } else {
            let packed_row_bytes = (format.words_for(1, cols) * 4).max(1) as u64;
            ((ctx.max_binding_bytes() / packed_row_bytes) as usize).max(1)
        };
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = max_rows.min(rows - start);
            let (words, _) = pack_quantized(&raw[start * rb..(start + n) * rb], dtype, n, cols)?;
            let label = format!("{name}[{start}..]");
            let data = if in_texture {
                WeightData::Texture(upload_texture(ctx, &label, &words, format, n, cols)?)
            } else {
                let t =
                    GpuTensor::from_words(ctx, &label, &words, &[words.len()], WeightDType::F32)?;
                WeightData::Buffer(t.buffer)
            };
            parts.push(MatrixPart {
                first_row: start,
                rows: n,
                format: MatrixFormat::Quant(format),
                data,
            });
            start += n;
        }
        Ok(GpuMatrix {
            rows,
            cols,
            parts,
            host: Vec::new(),
        })
    }

    pub fn upload(
        ctx: &GpuContext,
        name: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        dtype: WeightDType,
    ) -> Result<GpuMatrix, GpuError> {
        let row_bytes = (cols * dtype.bytes_per_elem()).max(1) as u64;
        // Rows per part: within the binding limit, and a multiple of 8 (pack_weight pads a
        // part's rows to one) so parts need no padding but the last.
        let max_rows = ((ctx.max_binding_bytes() / row_bytes) as usize & !7).max(8);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = max_rows.min(rows - start);
            let part = &data[start * cols..(start + n) * cols];
            let words = pack_weight(part, n, cols, dtype);
            let t = GpuTensor::from_words(
                ctx,
                &format!("{name}[{start}..]"),
                &words,
                &[n, cols],
                dtype,
            )?;
            parts.push(MatrixPart {
                first_row: start,
                rows: n,
                format: MatrixFormat::Dense(dtype),
                data: WeightData::Buffer(t.buffer),
            });
            start += n;
        }
        Ok(GpuMatrix {
            rows,
            cols,
            parts,
            host: Vec::new(),
        })
    }
}
