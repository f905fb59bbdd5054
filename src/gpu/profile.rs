//! Per-kernel GPU time of a step, from timestamp queries (`wllm bench ... --profile`).
//!
//! While profiling, the runner records each kernel call in its own compute pass whose start
//! and end write a timestamp; after the step the pairs are read back and summed by label.
//! The extra pass boundaries cost some GPU time themselves, so profiled steps explain where
//! time goes; unprofiled runs measure speed.

use std::collections::BTreeMap;

use super::tensor::map_and_read;
use super::{GpuContext, GpuError};

/// Timed passes one step can hold; calls past it run untimed (counted in `untimed`).
const MAX_PASSES: u32 = 2048;

pub struct Profiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
    /// Label of each timed pass of the step being recorded, in order.
    labels: Vec<&'static str>,
    untimed: usize,
}

/// Where one step's GPU time went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepProfile {
    /// label → (GPU µs, calls), summed over the step.
    pub kernels: BTreeMap<&'static str, (f64, usize)>,
    /// Calls past the query capacity, not timed.
    pub untimed: usize,
}

impl StepProfile {
    /// GPU µs of every timed call.
    pub fn gpu_us(&self) -> f64 {
        self.kernels.values().map(|(us, _)| us).sum()
    }

    pub fn calls(&self) -> usize {
        self.kernels.values().map(|(_, n)| n).sum::<usize>() + self.untimed
    }

    /// Adds another step's figures (for averaging over steps).
    pub fn add(&mut self, other: &StepProfile) {
        for (label, (us, n)) in &other.kernels {
            let e = self.kernels.entry(label).or_default();
            e.0 += us;
            e.1 += n;
        }
        self.untimed += other.untimed;
    }
}

impl Profiler {
    /// Fails when the adapter cannot write timestamps in compute passes.
    pub fn new(ctx: &GpuContext) -> Result<Profiler, GpuError> {
        if !ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(GpuError::MissingFeature(format!(
                "TIMESTAMP_QUERY (needed for --profile) on {}",
                ctx.adapter_info.name
            )));
        }
        let count = 2 * MAX_PASSES;
        let bytes = count as u64 * 8;
        let query_set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Profiler {
            query_set,
            resolve,
            readback,
            period_ns: ctx.queue.get_timestamp_period() as f64,
            labels: Vec::new(),
            untimed: 0,
        })
    }

    /// The timestamp writes for the next pass, labelled `label`; `None` once full.
    pub fn next_pass(
        &mut self,
        label: &'static str,
    ) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32;
        if i >= MAX_PASSES {
            self.untimed += 1;
            return None;
        }
        self.labels.push(label);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    /// Records the copy of this step's timestamps to the readback buffer.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = 2 * self.labels.len() as u32;
        if n == 0 {
            return;
        }
        enc.resolve_query_set(&self.query_set, 0..n, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, n as u64 * 8);
    }

    /// After the step's submit: reads the timestamps and starts over for the next step.
    pub fn finish(&mut self, ctx: &GpuContext) -> Result<StepProfile, GpuError> {
        let mut out = StepProfile {
            untimed: std::mem::take(&mut self.untimed),
            ..Default::default()
        };
        let labels = std::mem::take(&mut self.labels);
        if labels.is_empty() {
            return Ok(out);
        }
        let words = map_and_read(ctx, &self.readback, labels.len() as u64 * 16)?;
        let stamp = |i: usize| words[2 * i] as u64 | ((words[2 * i + 1] as u64) << 32);
        for (i, label) in labels.into_iter().enumerate() {
            let ticks = stamp(2 * i + 1).saturating_sub(stamp(2 * i));
            let e = out.kernels.entry(label).or_default();
            e.0 += ticks as f64 * self.period_ns / 1000.0;
            e.1 += 1;
        }
        Ok(out)
    }
}

/// Records a step's kernel calls: all into one compute pass, or, when profiling, each call
/// into its own timed pass.
pub(crate) struct Recorder<'a> {
    enc: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    profiler: Option<&'a mut Profiler>,
}

impl<'a> Recorder<'a> {
    pub fn new(ctx: &GpuContext, profiler: Option<&'a mut Profiler>) -> Self {
        let enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        Recorder {
            enc,
            pass: None,
            profiler,
        }
    }

    /// The pass the next call (named `label`) is recorded into.
    pub fn pass(&mut self, label: &'static str) -> &mut wgpu::ComputePass<'static> {
        if let Some(p) = self.profiler.as_deref_mut() {
            self.pass = None; // ends the previous call's pass
            let timestamp_writes = p.next_pass(label);
            let pass = self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes,
            });
            return self.pass.insert(pass.forget_lifetime());
        }
        let enc = &mut self.enc;
        self.pass.get_or_insert_with(|| {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            })
            .forget_lifetime()
        })
    }

    /// Ends the pass, and the encoder takes further commands (copies, the timestamp resolve).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.enc
    }

    pub fn finish(mut self) -> wgpu::CommandBuffer {
        self.pass = None;
        if let Some(p) = self.profiler.as_deref() {
            p.resolve(&mut self.enc);
        }
        self.enc.finish()
    }
}

/// `label` as a `&'static str` for the profile's keys: each distinct label is leaked once
/// (a model's op labels are a handful of short strings).
pub(crate) fn intern_label(label: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static LABELS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = LABELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = set.get(label.as_str()) {
        return l;
    }
    let l: &'static str = Box::leak(label.into_boxed_str());
    set.insert(l);
    l
}
