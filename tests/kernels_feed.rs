//! The token-feed kernel (a step takes the tokens the step before it picked, on the GPU)
//! against its CPU reference, and the definition: a marked id becomes `ids[row]`, every other
//! id stays. Token counts around the workgroup size (1, 63, 64, 65, 300), a buffer longer than
//! the step (ids past `num_tokens` must stay marked), marks on every token, on none, and on
//! the first and last row of the previous step.

mod common;

use common::plumbing::{Rng, ctx, run, u32s};
use wllm::batch::FED_TOKEN;
use wllm::gpu::kernels::{FeedTokens, feed_tokens};
use wllm::gpu::tensor::read_words;

/// Runs the kernel over the first `num_tokens` of `token_ids` with the previous step's `ids`.
fn feed_on_gpu(token_ids: &[u32], num_tokens: usize, ids: &[u32]) -> Vec<u32> {
    let t = u32s("token_ids", token_ids);
    let prev = u32s("ids", ids);
    let k = FeedTokens::new(ctx());
    let bg = k.bind(ctx(), &t.buffer, &prev.buffer);
    run(|pass| k.encode(pass, &bg, num_tokens, ids.len()));
    read_words(ctx(), &t.buffer).expect("read back")
}

/// The definition, written independently of the reference.
fn definition(token_ids: &[u32], num_tokens: usize, ids: &[u32]) -> Vec<u32> {
    let mut out = token_ids.to_vec();
    for t in out.iter_mut().take(num_tokens) {
        if *t >= 0x8000_0000 {
            *t = ids[(*t - 0x8000_0000) as usize];
        }
    }
    out
}

#[test]
fn marked_tokens_take_the_previous_steps_picks() {
    let mut rng = Rng::new(7);
    for (num_tokens, rows, marked_pct) in [
        (1, 1, 100),
        (63, 5, 50),
        (64, 64, 100),
        (65, 17, 30),
        (300, 256, 80),
        (300, 3, 0),
    ] {
        let ids: Vec<u32> = (0..rows).map(|_| rng.below(49_152usize)).collect();
        // Three extra entries past the step, marked: the kernel must not touch them.
        let mut token_ids: Vec<u32> = (0..num_tokens + 3)
            .map(|i| {
                if i >= num_tokens || rng.below(100) < marked_pct as u32 {
                    FED_TOKEN | rng.below(rows)
                } else {
                    rng.below(49_152usize)
                }
            })
            .collect();
        if marked_pct > 0 {
            token_ids[0] = FED_TOKEN;
            token_ids[num_tokens - 1] = FED_TOKEN | (rows as u32 - 1);
        }
        let gpu = feed_on_gpu(&token_ids, num_tokens, &ids);
        let want = definition(&token_ids, num_tokens, &ids);
        assert_eq!(gpu, want, "{num_tokens} tokens, {rows} rows");
        let mut reference = feed_tokens::reference(&token_ids[..num_tokens], &ids);
        reference.extend_from_slice(&token_ids[num_tokens..]);
        assert_eq!(reference, want, "reference, {num_tokens} tokens");
        assert!(gpu[num_tokens..].iter().all(|t| t & FED_TOKEN != 0));
    }
}

#[test]
fn a_mark_past_the_previous_step_reads_zero_not_out_of_range() {
    let ids = [5u32, 6];
    let token_ids = [FED_TOKEN | 1, FED_TOKEN | 2, FED_TOKEN | 1000, 9];
    assert_eq!(feed_on_gpu(&token_ids, 4, &ids), vec![6, 0, 0, 9]);
    assert_eq!(feed_tokens::reference(&token_ids, &ids), vec![6, 0, 0, 9]);
}
