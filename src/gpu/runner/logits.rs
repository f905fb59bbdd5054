//! What a step reads back: the token the GPU picked for every logits row (its argmax, or a
//! sample per `StepBatch::row_sampling`) and the whole rows only where the batch asked for
//! them (`StepBatch::full_logits`).

use crate::gpu::tensor::map_and_read_after;
use crate::gpu::{GpuContext, GpuError};

/// The output of one step for `StepBatch::logit_rows`, in that order.
#[derive(Debug, Clone, Default)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    /// The GPU's token for each row: the argmax (`sampling::argmax` order: lowest id on
    /// ties, NaN last) or, for a row the batch had sampled on the GPU, the sample.
    tokens: Vec<u32>,
    /// Per row: its index among the kept rows of `data`, when kept.
    kept: Vec<Option<usize>>,
    /// The kept rows, (kept, vocab) row-major.
    data: Vec<f32>,
}

impl Logits {
    /// The GPU's token for row `r`: its argmax, or its sample when the batch had the row
    /// sampled on the GPU ([`crate::batch::StepBatch::sample_on_gpu`]).
    pub fn token(&self, r: usize) -> u32 {
        self.tokens[r]
    }

    /// The logits of row `r`, or `None` when the batch asked for its GPU-picked token only.
    pub fn row(&self, r: usize) -> Option<&[f32]> {
        let k = self.kept.get(r).copied().flatten()?;
        Some(&self.data[k * self.vocab..(k + 1) * self.vocab])
    }
}

/// A readback buffer of `size` bytes.
pub(super) fn staging_buffer(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Where the readback of one step lands in the staging buffer: the ids first, then the kept
/// rows back to back.
#[derive(Debug)]
pub(super) struct Readback {
    rows: usize,
    vocab: usize,
    kept: Vec<Option<usize>>,
    num_kept: usize,
}

impl Readback {
    pub(super) fn new(full_logits: &[bool], vocab: usize) -> Self {
        let mut num_kept = 0;
        let kept = full_logits
            .iter()
            .map(|&full| {
                full.then(|| {
                    num_kept += 1;
                    num_kept - 1
                })
            })
            .collect();
        Self {
            rows: full_logits.len(),
            vocab,
            kept,
            num_kept,
        }
    }

    /// Logits rows of the step.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the staging buffer must hold for `rows` rows, all kept.
    pub(super) fn staging_bytes(rows: usize, vocab: usize) -> u64 {
        (rows * 4 + rows * vocab * 4) as u64
    }

    /// Bytes of the staging buffer this step's readback takes.
    pub(super) fn bytes(&self) -> u64 {
        (self.rows * 4 + self.num_kept * self.vocab * 4) as u64
    }

    /// Copies the ids and the kept rows (runs of adjacent rows in one copy) into `staging`.
    pub(super) fn record(
        &self,
        enc: &mut wgpu::CommandEncoder,
        ids: &wgpu::Buffer,
        logits: &wgpu::Buffer,
        staging: &wgpu::Buffer,
    ) {
        if self.rows == 0 {
            return;
        }
        let row_bytes = (self.vocab * 4) as u64;
        let ids_bytes = (self.rows * 4) as u64;
        enc.copy_buffer_to_buffer(ids, 0, staging, 0, ids_bytes);
        let mut r = 0;
        while r < self.rows {
            let Some(k) = self.kept[r] else {
                r += 1;
                continue;
            };
            let run = self.kept[r..].iter().take_while(|x| x.is_some()).count();
            enc.copy_buffer_to_buffer(
                logits,
                r as u64 * row_bytes,
                staging,
                ids_bytes + k as u64 * row_bytes,
                run as u64 * row_bytes,
            );
            r += run;
        }
    }

    /// Waits for the step (submission `step`, not anything submitted after it) and decodes
    /// what [`Readback::record`] copied.
    pub(super) fn finish(
        self,
        ctx: &GpuContext,
        staging: &wgpu::Buffer,
        step: wgpu::SubmissionIndex,
    ) -> Result<Logits, GpuError> {
        if self.rows == 0 {
            ctx.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(step),
                    timeout: None,
                })
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            return Ok(Logits {
                vocab: self.vocab,
                ..Default::default()
            });
        }
        let words = map_and_read_after(ctx, staging, self.bytes(), Some(step))?;
        let (ids, rest) = words.split_at(self.rows);
        Ok(Logits {
            rows: self.rows,
            vocab: self.vocab,
            tokens: ids.to_vec(),
            kept: self.kept,
            data: bytemuck::cast_slice(rest).to_vec(),
        })
    }
}
