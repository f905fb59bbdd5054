//! Running a step: write the batch's metadata, submit its commands (prerecorded when the shape
//! was guessed), and read back what it picked. [`Runner::forward`] does all of it;
//! [`Runner::submit`] and [`Runner::wait`] split it so the engine can schedule and submit the
//! next step while the GPU runs this one (at most two steps in flight, one staging buffer each).

use super::logits::{Readback, staging_buffer};
use super::record::StepShape;
use super::{Logits, Runner, STAGING_LABELS};
use crate::batch::StepBatch;
use crate::gpu::GpuError;
use crate::gpu::profile::Profiler;

/// A submitted step, to be passed to [`Runner::wait`] for its logits.
#[must_use = "a submitted step holds a staging buffer until it is waited for"]
#[derive(Debug)]
pub struct StepTicket {
    submission: wgpu::SubmissionIndex,
    /// The pick's commands while they wait for the step's masks ([`Runner::submit_masks`]),
    /// with the mask words they need.
    pick: Option<(wgpu::CommandBuffer, usize)>,
    readback: Readback,
    staging: usize,
    /// The runner's count of submitted steps at this one (from 1).
    step: u64,
}

impl StepTicket {
    /// Logits rows the step returns.
    pub fn rows(&self) -> usize {
        self.readback.rows()
    }

    /// Whether the step waits for its masks ([`Runner::submit_masks`]).
    pub fn awaits_masks(&self) -> bool {
        self.pick.is_some()
    }
}

impl Runner {
    /// Runs every layer over the batch and returns the logits of `batch.logit_rows`.
    pub fn forward(&mut self, batch: &StepBatch) -> Result<Logits, GpuError> {
        let start = std::time::Instant::now();
        let mut profiler = self.profiler.take();
        let res = self
            .submit_with(batch, profiler.as_mut(), start, false)
            .and_then(|t| self.wait(t));
        let profile = match (&res, profiler.as_mut()) {
            (Ok(_), Some(p)) => Some(p.finish(&self.ctx)?),
            _ => None,
        };
        self.profiler = profiler;
        self.last_profile = profile;
        self.last_timing.total_us = start.elapsed().as_secs_f64() * 1e6;
        res
    }

    /// Submits the step and returns at once. Tokens the batch marks with
    /// [`StepBatch::feed_from_previous_step`] come from the step submitted just before this
    /// one. Two steps may be in flight (submitted, not waited for): a third takes over the
    /// readback buffer of the oldest, whose ticket then waits with an error (so a ticket
    /// dropped on an error path blocks nothing). Not while profiling, which times one step
    /// at a time (use [`Runner::forward`]).
    ///
    /// `next_fed`: whether the step after this one will take its tokens from it (the
    /// overlapped engine and lockstep decode know), so the commands recorded for it while the
    /// GPU runs this one include the feed.
    pub fn submit(&mut self, batch: &StepBatch, next_fed: bool) -> Result<StepTicket, GpuError> {
        if self.profiler.is_some() {
            return Err(GpuError::Shape {
                op: "submit",
                msg: "profiling runs one step at a time: use forward".into(),
            });
        }
        let start = std::time::Instant::now();
        self.submit_with(batch, None, start, next_fed)
    }

    /// Waits for a submitted step and reads back its picks and kept logits rows. Waits for
    /// that step only, not for one submitted after it.
    pub fn wait(&mut self, ticket: StepTicket) -> Result<Logits, GpuError> {
        let StepTicket {
            submission,
            pick,
            readback,
            staging,
            step,
        } = ticket;
        if pick.is_some() {
            return Err(GpuError::Readback(format!(
                "step {step} was waited for before its logits masks were submitted"
            )));
        }
        if self.staging_step[staging] != step {
            return Err(GpuError::Readback(format!(
                "step {step}'s readback was overwritten: more than two steps were in flight"
            )));
        }
        readback.finish(&self.ctx, &self.staging[staging], submission)
    }

    /// Hands over the masks of a step submitted with `StepBatch::adjust.masks_later` (the
    /// forward pass is already on the GPU) and submits its pick: `masks` holds the step's
    /// masks back to back, in the order its rows point to.
    pub fn submit_masks(&mut self, ticket: &mut StepTicket, masks: &[u32]) -> Result<(), GpuError> {
        let Some((pick, words)) = ticket.pick.take() else {
            return Err(GpuError::Shape {
                op: "submit_masks",
                msg: "the step does not wait for masks".into(),
            });
        };
        if masks.len() != words {
            return Err(GpuError::Shape {
                op: "submit_masks",
                msg: format!("{} mask words for a step that needs {words}", masks.len()),
            });
        }
        if !masks.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.meta.masks, 0, bytemuck::cast_slice(masks));
        }
        let t = std::time::Instant::now();
        ticket.submission = self.ctx.queue.submit([pick]);
        self.last_timing.submit_us += t.elapsed().as_secs_f64() * 1e6;
        Ok(())
    }

    fn submit_with(
        &mut self,
        batch: &StepBatch,
        profiler: Option<&mut Profiler>,
        start: std::time::Instant,
        next_fed: bool,
    ) -> Result<StepTicket, GpuError> {
        self.check(batch)?;
        let staging = self.next_staging;
        let q = &self.ctx.queue;
        let m = &self.meta;
        q.write_buffer(&m.token_ids, 0, bytemuck::cast_slice(&batch.token_ids));
        q.write_buffer(&m.positions, 0, bytemuck::cast_slice(&batch.positions));
        q.write_buffer(
            &m.slot_mapping,
            0,
            bytemuck::cast_slice(&batch.slot_mapping),
        );
        q.write_buffer(&m.token_seq, 0, bytemuck::cast_slice(&batch.token_seq));
        q.write_buffer(
            &m.block_tables,
            0,
            bytemuck::cast_slice(&batch.block_tables),
        );
        if !batch.logit_rows.is_empty() {
            q.write_buffer(&m.logit_rows, 0, bytemuck::cast_slice(&batch.logit_rows));
        }
        if batch.samples_on_gpu() {
            q.write_buffer(
                &m.row_sampling,
                0,
                bytemuck::cast_slice(&batch.row_sampling),
            );
        }
        let adj = &batch.adjust;
        if !adj.is_empty() {
            q.write_buffer(&m.row_adjust, 0, bytemuck::cast_slice(&adj.rows));
            if !adj.biases.is_empty() {
                q.write_buffer(&m.biases, 0, bytemuck::cast_slice(&adj.biases));
            }
            if !adj.masks_later && !adj.masks.is_empty() {
                q.write_buffer(&m.masks, 0, bytemuck::cast_slice(&adj.masks));
            }
        }

        let shape = StepShape::of(batch, self.last_rows);
        let readback = Readback::new(&shape.full_logits, self.vocab);
        self.fit_staging(staging, readback.bytes());
        let profiling = profiler.is_some();
        let commands = match self.prerecorded.take() {
            Some((s, st, commands)) if s == shape && st == staging && !profiling => {
                self.last_timing.prerecorded = true;
                commands
            }
            _ => {
                self.last_timing.prerecorded = false;
                self.record(&shape, &readback, staging, profiler)
            }
        };
        self.last_timing.encode_us = start.elapsed().as_secs_f64() * 1e6;
        let submit_start = std::time::Instant::now();
        let (submission, pick) = match commands.pick {
            Some(pick) => (
                self.ctx.queue.submit([commands.forward]),
                Some((pick, adj.num_masks * self.mask_words)),
            ),
            None => (self.ctx.queue.submit([commands.forward]), None),
        };
        self.last_timing.submit_us = submit_start.elapsed().as_secs_f64() * 1e6;
        self.submitted_steps += 1;
        self.staging_step[staging] = self.submitted_steps;
        self.next_staging = 1 - staging;
        self.last_rows = shape.full_logits.len();
        // While the GPU runs this step, record the next one in case it has the shape a decode
        // step following this one would have (the common case when every sequence decodes).
        // (Not where the next step's readback outgrows its buffer: that buffer may still
        // hold the readback of the step before this one, so it is only replaced at the
        // next submit.)
        if !profiling && let Some(next) = shape.next_decode(next_fed) {
            let next_readback = Readback::new(&next.full_logits, self.vocab);
            if next_readback.bytes() <= self.staging[self.next_staging].size() {
                let commands = self.record(&next, &next_readback, self.next_staging, None);
                self.prerecorded = Some((next, self.next_staging, commands));
            }
        }
        Ok(StepTicket {
            submission,
            pick,
            readback,
            staging,
            step: self.submitted_steps,
        })
    }

    /// Makes readback buffer `i` hold `bytes`, at the submit that takes it over: a smaller
    /// one is replaced by one of at least twice its size (at most a step with every row kept),
    /// so a run that keeps more and more rows reallocates a few times, not every step.
    /// Commands recorded ahead for the old buffer are dropped.
    fn fit_staging(&mut self, i: usize, bytes: u64) {
        let have = self.staging[i].size();
        if bytes <= have {
            return;
        }
        let most = Readback::staging_bytes(self.max_logit_rows, self.vocab);
        let size = (2 * have).min(most).max(bytes);
        log::debug!("logits readback buffer {i}: {have} -> {size} bytes");
        self.staging[i] = staging_buffer(&self.ctx, STAGING_LABELS[i], size);
        if matches!(self.prerecorded, Some((_, st, _)) if st == i) {
            self.prerecorded = None;
        }
    }
}
