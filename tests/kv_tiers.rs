//! The KV tiers end to end: prefix blocks the GPU cache evicts come back from host memory,
//! and persistent prefixes from disk after a restart, giving the logits a recompute gives,
//! bit for bit.

mod common;

use std::time::Duration;

use common::temp_dir::TempDir;
use common::{fixtures, gpu, gpu_other_forms};
use wllm::engine::{Completion, Engine, EngineConfig, Prompt, Request};
use wllm::{GpuContext, SamplingParams, WeightDType};

const BLOCK: usize = 4;

/// An engine on the tiny GQA Llama with `blocks` KV blocks of 4 tokens and `host` bytes of
/// host tier (`Some(0)`: none), optionally a disk tier.
fn engine(
    ctx: &GpuContext,
    dtype: WeightDType,
    blocks: usize,
    host: Option<u64>,
    disk: Option<&std::path::Path>,
) -> Engine {
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.dtype = dtype;
    cfg.model.num_blocks = Some(blocks);
    cfg.model.block_size = BLOCK;
    cfg.model.max_seqs = 4;
    cfg.model.max_batch_tokens = 64;
    cfg.kv_tiers.host_bytes = host;
    cfg.kv_tiers.disk_dir = disk.map(|d| d.to_path_buf());
    cfg.overlap_steps = Some(true);
    Engine::with_context(ctx, cfg, &mut |_, _| {}).unwrap()
}

/// A 33-token prompt: 8 full blocks, of which (33 - 1) / 4 = 8 can be reused.
fn long_prompt(seed: u32) -> Vec<u32> {
    (0..33).map(|i| (i * 37 + seed * 11 + 5) % 500).collect()
}

/// Greedy, 6 tokens, with the top-5 logprobs of each (the logits, in effect).
fn ask(e: &Engine, prompt: Vec<u32>, persist: bool) -> Completion {
    let mut r = Request::new(Prompt::Ids(prompt));
    r.max_tokens = 6;
    r.sampling = SamplingParams::default();
    r.logprobs = Some(5);
    r.persist = persist;
    e.generate(r).unwrap()
}

/// Output ids and every logprob's bits.
fn bits(c: &Completion) -> (Vec<u32>, Vec<Vec<u32>>) {
    let lp = (c.logprobs.iter())
        .map(|t| {
            let mut v = vec![t.logprob.to_bits()];
            v.extend(t.top.iter().flat_map(|(id, l)| [*id, l.to_bits()]));
            v
        })
        .collect();
    (c.output_ids.clone(), lp)
}

/// Waits (bounded) until the engine is idle and its offloads have landed.
fn settled(e: &Engine) -> wllm::EngineStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = e.stats();
        let idle = st.blocks_used == 0 && st.requests_running == 0;
        if (idle && st.kv_tiers.host.writing == 0) || std::time::Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fills the 12-block pool with other prompts, so every cached block of earlier requests
/// is evicted.
fn flush_gpu_cache(e: &Engine) {
    for seed in 100..103 {
        ask(e, long_prompt(seed), false);
    }
}

fn check_host_restore(ctx: &GpuContext, dtype: WeightDType) {
    let p = long_prompt(1);
    // The reference: no tiers, nothing cached.
    let cold = ask(&engine(ctx, dtype, 12, Some(0), None), p.clone(), false);
    assert_eq!(cold.usage.cached_tokens, 0);
    let e = engine(ctx, dtype, 12, Some(64 << 20), None);
    let first = ask(&e, p.clone(), false);
    assert_eq!(
        bits(&first),
        bits(&cold),
        "{dtype:?}: the host tier changed a cold run"
    );
    flush_gpu_cache(&e);
    let st = settled(&e);
    assert!(st.evictions >= 8, "{st:?}");
    assert!(st.kv_tiers.host.ready >= 8, "{:?}", st.kv_tiers);
    let hits_before = st.kv_tiers.host_hit_tokens;
    // All 8 reusable blocks come back from host memory: only the last token is computed.
    let again = ask(&e, p, false);
    assert_eq!(again.usage.cached_tokens, 32, "{dtype:?}");
    assert_eq!(
        bits(&again),
        bits(&cold),
        "{dtype:?}: restored KV gives other logits than recomputing it"
    );
    let st = settled(&e);
    assert_eq!(st.kv_tiers.host_hit_tokens - hits_before, 32);
    assert!(st.kv_tiers.host.restores >= 8);
    let image = st.kv_tiers.image_bytes;
    assert!(image > 0 && st.kv_tiers.restore_bytes >= 8 * image);
    assert_eq!(st.kv_tiers.offload_bytes, st.kv_tiers.host.offloads * image);
    assert_eq!(st.blocks_used, 0);
}

#[test]
fn a_prefix_restored_from_host_memory_gives_the_recomputed_logits() {
    for dtype in [WeightDType::F32, WeightDType::F16] {
        check_host_restore(gpu(), dtype);
    }
    // The other kernel forms keep their pool in buffers where the first keep textures.
    check_host_restore(gpu_other_forms(), WeightDType::F16);
}

#[test]
fn batched_requests_under_eviction_give_the_same_outputs_with_the_host_tier() {
    // Many requests sharing prefixes, all at once, in a pool that forces evictions and
    // preemptions; then again, reusing what the host tier kept.
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|i| {
            let mut p = long_prompt(i % 3);
            p.truncate(17 + (i as usize % 4) * 4);
            p.push(400 + i);
            p
        })
        .collect();
    let run = |e: &Engine| -> Vec<Vec<u32>> {
        let handles: Vec<_> = (prompts.iter())
            .map(|p| {
                let mut r = Request::new(Prompt::Ids(p.clone()));
                r.max_tokens = 8;
                e.submit(r).unwrap()
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.wait().unwrap().output_ids)
            .collect()
    };
    let off = engine(gpu(), WeightDType::F32, 20, Some(0), None);
    let want = run(&off);
    let on = engine(gpu(), WeightDType::F32, 20, Some(64 << 20), None);
    assert_eq!(run(&on), want);
    settled(&on);
    assert_eq!(run(&on), want);
    let st = settled(&on);
    assert!(st.kv_tiers.host.restores > 0, "{:?}", st.kv_tiers);
    assert_eq!(run(&off), want);
}

#[test]
fn a_persisted_prefix_comes_back_from_disk_after_a_restart() {
    let dir = TempDir::new("kv-disk");
    let p = long_prompt(7);
    let first = {
        let e = engine(gpu(), WeightDType::F16, 12, Some(64 << 20), Some(&dir.0));
        let c = ask(&e, p.clone(), true);
        // A request that does not ask leaves nothing on disk.
        ask(&e, long_prompt(8), false);
        c
        // Dropping the engine lands the readbacks and waits for the disk writer.
    };
    let files: Vec<_> = walk(&dir.0)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "kvblock"))
        .collect();
    assert_eq!(files.len(), 8, "the prompt's 8 full blocks: {files:?}");
    // A restarted engine finds all 8 reusable blocks on disk.
    let e = engine(gpu(), WeightDType::F16, 12, Some(64 << 20), Some(&dir.0));
    let again = ask(&e, p.clone(), false);
    assert_eq!(again.usage.cached_tokens, 32);
    assert_eq!(
        bits(&again),
        bits(&first),
        "disk-restored KV changed the logits"
    );
    let st = settled(&e);
    assert_eq!(st.kv_tiers.disk.hits, 8);
    assert_eq!(st.kv_tiers.disk_loaded_tokens, 32);
    drop(e);
    // A corrupt block (a flipped byte in its middle) is rejected, never used: the chain
    // stops before it and the rest is computed, with the same result.
    let victim = corrupt_block_at(&files, &p, 3);
    let e = engine(gpu(), WeightDType::F16, 12, Some(64 << 20), Some(&dir.0));
    let c = ask(&e, p, false);
    assert_eq!(c.usage.cached_tokens, 3 * BLOCK);
    assert_eq!(bits(&c), bits(&first));
    let st = settled(&e);
    assert_eq!((st.kv_tiers.disk.hits, st.kv_tiers.disk.rejected), (3, 1));
    assert!(!victim.exists(), "a rejected file is removed");
    drop(e);
    // A request dropped while its blocks load from disk (it waits for the loader thread
    // outside the scheduler) leaves nothing behind, and a running request is not held up.
    let e = engine(gpu(), WeightDType::F16, 12, Some(64 << 20), Some(&dir.0));
    let mut busy = Request::new(Prompt::Ids(long_prompt(9)[..9].to_vec()));
    busy.max_tokens = 12;
    let running = e.submit(busy).unwrap();
    let mut r = Request::new(Prompt::Ids(long_prompt(7)));
    r.max_tokens = 2;
    drop(e.submit(r).unwrap());
    assert_eq!(running.wait().unwrap().output_ids.len(), 12);
    let again = ask(&e, long_prompt(7), false);
    assert_eq!(bits(&again), bits(&first));
    let st = settled(&e);
    assert_eq!((st.blocks_used, st.requests_waiting), (0, 0), "{st:?}");
}

/// Two requests submitted together whose prompts share a persisted prefix read its files
/// once: the second waits behind the first's load and reads only the blocks past it.
#[test]
fn requests_sharing_a_prefix_on_disk_read_it_once() {
    let dir = TempDir::new("kv-disk-shared");
    let short = long_prompt(5);
    // 41 tokens: `short`'s 8 reusable blocks, then 2 more.
    let mut long = short.clone();
    long.extend((0..8).map(|i| 400 + i));
    let (want_short, want_long) = {
        let e = engine(gpu(), WeightDType::F16, 16, Some(64 << 20), Some(&dir.0));
        let l = ask(&e, long.clone(), true);
        (ask(&e, short.clone(), false), l)
    };
    let e = engine(gpu(), WeightDType::F16, 16, Some(64 << 20), Some(&dir.0));
    let submit = |p: &[u32]| {
        let mut r = Request::new(Prompt::Ids(p.to_vec()));
        r.max_tokens = 6;
        r.logprobs = Some(5);
        e.submit(r).unwrap()
    };
    let (a, b) = (submit(&short), submit(&long));
    let (a, b) = (a.wait().unwrap(), b.wait().unwrap());
    assert_eq!((a.usage.cached_tokens, b.usage.cached_tokens), (32, 40));
    assert_eq!(bits(&a), bits(&want_short));
    assert_eq!(bits(&b), bits(&want_long));
    let st = settled(&e);
    assert_eq!(st.kv_tiers.disk.hits, 10, "{:?}", st.kv_tiers);
    assert_eq!(st.kv_tiers.disk_loaded_tokens, 40);
    assert_eq!((st.blocks_used, st.requests_waiting), (0, 0), "{st:?}");
}

#[test]
fn prompts_over_the_threshold_persist_without_asking() {
    let dir = TempDir::new("kv-disk-auto");
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.block_size = BLOCK;
    cfg.model.num_blocks = Some(12);
    cfg.kv_tiers.host_bytes = Some(16 << 20);
    cfg.kv_tiers.disk_dir = Some(dir.0.clone());
    cfg.kv_tiers.persist_min_tokens = Some(20);
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    ask(&e, long_prompt(1)[..12].to_vec(), false);
    ask(&e, long_prompt(2), false);
    drop(e);
    let n = walk(&dir.0)
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "kvblock"))
        .count();
    assert_eq!(n, 8, "only the 33-token prompt persists");
}

#[test]
fn a_disk_tier_without_a_host_tier_is_refused() {
    let dir = TempDir::new("kv-disk-refused");
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.kv_tiers.host_bytes = Some(0);
    cfg.kv_tiers.disk_dir = Some(dir.0.clone());
    let err = Engine::with_context(gpu(), cfg, &mut |_, _| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("host tier"), "{err}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Flips a byte in the middle of the file of `prompt`'s block `j`; returns its path.
fn corrupt_block_at(files: &[std::path::PathBuf], prompt: &[u32], j: usize) -> std::path::PathBuf {
    let mut parent = None;
    let mut key = None;
    for chunk in prompt.chunks_exact(BLOCK).take(j + 1) {
        let k = wllm::kv::block_hash(parent, chunk, None);
        parent = Some(k);
        key = Some(k);
    }
    let name = format!("{:016x}.kvblock", key.unwrap().0);
    let path = (files.iter())
        .find(|f| f.file_name().is_some_and(|n| n == name.as_str()))
        .expect("the block's file")
        .clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    path
}
