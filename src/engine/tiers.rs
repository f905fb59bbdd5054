//! Opening the KV tiers an engine keeps besides its GPU pool (see [`crate::tier`]).

use std::sync::mpsc::Sender;

use super::worker::Tiers;
use super::{Command, EngineConfig};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Runner};
use crate::kv::prefix_cache::Fnv64;
use crate::model::{ModelConfig, ModelFiles};
use crate::scheduler::Scheduler;
use crate::tier::disk::{DiskError, DiskNamespace, DiskTier};
use crate::tier::identity::model_identity;
use crate::tier::{DEFAULT_DISK_CAP, default_host_bytes};

/// Sizes the host tier from `cfg.kv_tiers` (its slots hold one block's image each), enables
/// it in the scheduler, and opens the disk tier in the namespace of this model, KV dtype,
/// block size and kernel family. A model whose every layer slides keeps no tiers.
pub(super) fn open(
    ctx: &GpuContext,
    (files, model): (&ModelFiles, &ModelConfig),
    cfg: &EngineConfig,
    runner: &Runner,
    sched: &mut Scheduler,
    commands: Sender<Command>,
) -> Result<Tiers> {
    let t = &cfg.kv_tiers;
    let image_bytes = runner.kv_block_geometry().image_bytes();
    let host_bytes = t.host_bytes.unwrap_or_else(default_host_bytes);
    let want = usize::try_from(host_bytes / image_bytes.max(1)).unwrap_or(usize::MAX);
    // The scheduler refuses a tier it cannot use (no prefix cache, every layer sliding).
    let slots = match want {
        0 => 0,
        n => match sched.enable_host_tier(n) {
            Ok(()) => n,
            Err(e) => {
                log::info!("KV host tier off: {e}");
                0
            }
        },
    };
    if slots > 0 {
        log::info!(
            "KV host tier: {slots} blocks of {image_bytes} bytes ({:.1} MiB at most)",
            (slots as u64 * image_bytes) as f64 / (1 << 20) as f64
        );
    }
    let disk = match &t.disk_dir {
        None => None,
        Some(_) if slots == 0 => {
            return Err(Error::Unsupported(
                "the KV disk tier loads blocks through the host tier: give --kv-host-memory room \
                 (and keep the prefix cache on; models whose every layer slides keep no tiers)"
                    .into(),
            ));
        }
        Some(dir) => {
            let ns = DiskNamespace {
                // The file's identity, and the configuration this engine derived from it and
                // its options (e.g. LongRoPE's factors follow --max-model-len).
                model: {
                    let mut h = Fnv64::new();
                    h.u64(model_identity(files)?);
                    h.field(format!("{model:?}").as_bytes());
                    h.finish()
                },
                dtype: cfg.model.dtype.name().to_string(),
                block_size: cfg.model.block_size,
                kernel_family: kernel_family(ctx),
                image_bytes,
            };
            let disk = DiskTier::open(dir, ns)?;
            disk.set_max_bytes(Some(t.disk_max_bytes.unwrap_or(DEFAULT_DISK_CAP)));
            log::info!("KV disk tier: {}", disk.dir().display());
            Some((disk, commands))
        }
    };
    Ok(Tiers::new(slots, image_bytes, disk, t.persist_min_tokens).map_err(DiskError::Thread)?)
}

/// What decides the bits of a block's KV besides the model, dtype and block size: the kernel
/// forms and tuning the profile picked, and the adapter and driver that run them. A disk
/// entry made elsewhere is then a miss, never a restore that differs from a recompute.
fn kernel_family(ctx: &GpuContext) -> String {
    let forms = match ctx.profile.kernel_forms {
        crate::gpu::KernelForms::Cpu => "cpu",
        crate::gpu::KernelForms::Gpu => "gpu",
    };
    let a = &ctx.adapter_info;
    let mut h = Fnv64::new();
    h.field(format!("{:?}", ctx.profile).as_bytes());
    for s in [&a.name, &a.driver, &a.driver_info] {
        h.field(s.as_bytes());
    }
    format!("{forms}-{:08x}", h.finish() as u32)
}
