//! Random-weight Hugging Face checkpoints (GPT-2 and Llama with GQA) in f32 against
//! transformers' outputs: greedy ids identical, teacher-forced logits within 2e-3
//! (compared as differences to the top-1 logit, which do not depend on normalization).

mod common;

use common::{fixtures, floats, gpu, ids, read_json};
use wllm::{Engine, EngineConfig, Generator, ModelOptions, Prompt, Request, WeightDType};

fn check_model(dir: &str, block_size: usize) {
    let path = fixtures().join(dir);
    let golden = read_json(&path.join("golden.json"));
    let mut opts = ModelOptions::new(&path);
    opts.dtype = WeightDType::F32;
    opts.block_size = block_size;
    // Small chunks so the 100-token prompt is prefilled across several steps.
    opts.max_batch_tokens = 48;
    opts.max_seqs = 16;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let mut cfg = EngineConfig::new(&path);
    cfg.model = opts.clone();
    let engine = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    let mut worst = 0f32;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let mut req = Request::new(Prompt::Ids(prompt.clone()));
        req.max_tokens = want.len();
        let out = engine.generate(req).unwrap();
        assert_eq!(out.output_ids, want, "{dir} {name}: greedy ids differ");

        let mut all = prompt.clone();
        all.extend(&want);
        let logits = g.logits(&all[..all.len() - 1]).unwrap();
        for (i, tk) in case["topk"].as_array().unwrap().iter().enumerate() {
            let row = &logits[prompt.len() - 1 + i];
            let ref_ids = ids(&tk["ids"]);
            let ref_logits = floats(&tk["logits"]);
            let top = row[ref_ids[0] as usize];
            for (id, l) in ref_ids.iter().zip(&ref_logits) {
                let ours = top - row[*id as usize];
                let theirs = ref_logits[0] - l;
                let err = (ours - theirs).abs();
                worst = worst.max(err);
                assert!(
                    err <= 2e-3,
                    "{dir} {name} step {i} id {id}: {ours} vs {theirs}"
                );
            }
        }
    }
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
    eprintln!("{dir}: worst logit-difference error {worst:.2e}");
}

#[test]
fn tiny_llama_gqa_matches_transformers_f32() {
    check_model("tiny-llama-gqa-public", 16);
}

#[test]
fn tiny_llama_gqa_matches_with_other_block_sizes() {
    check_model("tiny-llama-gqa-public", 1);
    check_model("tiny-llama-gqa-public", 64);
}

#[test]
fn tiny_gpt2_matches_transformers_f32() {
    check_model("tiny-gpt2-public", 16);
}

/// Decode steps run the commands the runner recorded while the GPU ran the step before (their
/// shape is predictable), so the CPU's recording leaves the step's critical path. The golden
/// checks above go through the same path: prerecorded steps must give the same ids.
#[test]
fn decode_steps_run_prerecorded_commands() {
    let mut opts = ModelOptions::new(fixtures().join("tiny-llama-gqa-public"));
    opts.dtype = WeightDType::F32;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let prompts = vec![
        vec![3, 1, 4, 1, 5],
        vec![9, 2, 6],
        vec![5, 3, 5, 8, 9, 7, 9],
    ];
    g.set_overlap(false);
    let run = g.lockstep(&prompts, 6).unwrap();
    assert_eq!(run.decode_steps, 6);
    assert_eq!(run.decode_prerecorded_steps, 6);
    assert_eq!(run.decode_overlapped_steps, 0);
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
}

/// Lockstep decode with overlapped steps (the default: step k+1 is submitted before step k
/// is read back, its tokens fed from step k's picks on the GPU) picks transformers' greedy
/// ids, the same as steps run one at a time.
#[test]
fn overlapped_lockstep_decode_matches_the_golden_ids() {
    let dir = fixtures().join("tiny-llama-gqa-public");
    let golden = read_json(&dir.join("golden.json"));
    let cases = golden["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let want: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["greedy_ids"])).collect();
    let gen_len = want.iter().map(Vec::len).min().unwrap() - 1;
    let mut opts = ModelOptions::new(dir);
    opts.dtype = WeightDType::F32;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    g.set_overlap(true);
    let overlapped = g.lockstep(&prompts, gen_len).unwrap();
    assert_eq!(overlapped.decode_overlapped_steps, gen_len - 1);
    // Every decode step, fed ones included, ran the commands recorded during the step before.
    assert_eq!(overlapped.decode_prerecorded_steps, gen_len);
    g.set_overlap(false);
    let one_at_a_time = g.lockstep(&prompts, gen_len).unwrap();
    assert_eq!(overlapped.outputs, one_at_a_time.outputs);
    for (i, (got, want)) in overlapped.outputs.iter().zip(&want).enumerate() {
        assert_eq!(got[..], want[..=gen_len], "case {i}");
    }
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
}

/// The runner's split step: a second step submitted before the first is read back takes the
/// first's pick through a feed mark and gives what two forwards give; each wait returns its
/// own step; a third step in flight takes over the oldest's readback (whose wait then fails);
/// a feed mark naming a row the previous step did not have is refused.
#[test]
fn runner_overlaps_two_steps_and_refuses_bad_feeds() {
    use wllm::batch::{FED_TOKEN, LogitRows, StepBatch};
    use wllm::kv::{BlockPool, BlockTable};
    let mut opts = ModelOptions::new(fixtures().join("tiny-llama-gqa-public"));
    opts.dtype = WeightDType::F32;
    opts.block_size = 4;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let runner = g.runner_mut();
    let rc = *runner.runner_config();
    let max_blocks = runner.max_blocks();
    let mut pool = BlockPool::new(rc.num_blocks, rc.block_size).unwrap();
    let mut table = BlockTable::new();
    table.grow_to(&mut pool, 8).unwrap();
    let step = |tokens: &[u32], pos: usize| {
        let mut b = StepBatch::new(max_blocks);
        b.push_sequence(tokens, pos, &table, rc.block_size, LogitRows::Last)
            .unwrap();
        b.argmax_only(0);
        b
    };
    let prompt = [3u32, 1, 4, 1, 5];
    let first = runner.forward(&step(&prompt, 0)).unwrap().token(0);
    let second = runner.forward(&step(&[first], 5)).unwrap().token(0);
    // Overlapped: the second step's token is fed from the first on the GPU.
    let t1 = runner.submit(&step(&prompt, 0), true).unwrap();
    let mut fed = step(&[0], 5);
    fed.feed_from_previous_step(0, 0);
    let t2 = runner.submit(&fed, false).unwrap();
    assert_eq!(runner.wait(t1).unwrap().token(0), first);
    assert_eq!(runner.wait(t2).unwrap().token(0), second);
    // Three in flight: the oldest's readback buffer is reused.
    let a = runner.submit(&step(&prompt, 0), true).unwrap();
    let b = runner.submit(&step(&prompt, 0), true).unwrap();
    let c = runner.submit(&step(&[first], 5), false).unwrap();
    assert!(runner.wait(a).is_err());
    assert_eq!(runner.wait(b).unwrap().token(0), first);
    assert_eq!(runner.wait(c).unwrap().token(0), second);
    // The step before had one row: a mark naming row 1 is refused, as is a bare top-bit id.
    let mut bad = step(&[0], 5);
    bad.feed_from_previous_step(0, 1);
    assert!(runner.submit(&bad, false).is_err());
    let mut bad = step(&[0], 5);
    bad.token_ids[0] = FED_TOKEN | 7;
    assert!(runner.forward(&bad).is_err());
    // Block-table rows as narrow as the batch needs (the engine's per-step width) give the
    // same picks; a position past the rows' width is refused.
    let narrow = |cols: usize| {
        let mut b = StepBatch::new(cols);
        b.push_sequence(&prompt, 0, &table, rc.block_size, LogitRows::Last)
            .unwrap();
        b.argmax_only(0);
        b
    };
    assert_eq!(runner.block_columns(2), 2);
    assert_eq!(runner.forward(&narrow(2)).unwrap().token(0), first);
    let mut too_narrow = narrow(2);
    too_narrow.max_blocks = 1;
    too_narrow.block_tables.truncate(1);
    assert!(runner.forward(&too_narrow).is_err());
    table.release(&mut pool).unwrap();
}

/// The logits readback buffers start with room for the picked ids only and grow at the submit
/// of the first step that keeps whole rows, also while the other buffer holds a step in
/// flight: the rows read back equal a fresh run's, and the in-flight step keeps its pick.
#[test]
fn readback_buffers_grow_for_steps_that_keep_rows() {
    use wllm::batch::{LogitRows, StepBatch};
    use wllm::kv::{BlockPool, BlockTable};
    let mut opts = ModelOptions::new(fixtures().join("tiny-llama-gqa-public"));
    opts.dtype = WeightDType::F32;
    opts.block_size = 4;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let prompt = [3u32, 1, 4, 1, 5, 9, 2];
    let runner = g.runner_mut();
    let rc = *runner.runner_config();
    let vocab = runner.vocab_size();
    let small = runner.readback_capacity();
    assert_eq!(small[0], small[1]);
    assert!(
        small[0] < (vocab * 4) as u64,
        "{small:?}: no room for a row yet"
    );
    let max_blocks = runner.max_blocks();
    let mut pool = BlockPool::new(rc.num_blocks, rc.block_size).unwrap();
    let mut table = BlockTable::new();
    table.grow_to(&mut pool, prompt.len()).unwrap();
    let step = |rows: LogitRows| {
        let mut b = StepBatch::new(max_blocks);
        b.push_sequence(&prompt, 0, &table, rc.block_size, rows)
            .unwrap();
        if rows == LogitRows::Last {
            b.argmax_only(0);
        }
        b
    };
    let first = runner.forward(&step(LogitRows::Last)).unwrap().token(0);
    assert_eq!(runner.readback_capacity(), small);
    // The row-keeping step is submitted while the pick-only one is in flight.
    let picks = runner.submit(&step(LogitRows::Last), false).unwrap();
    let rows = runner.submit(&step(LogitRows::All), false).unwrap();
    assert_eq!(runner.wait(picks).unwrap().token(0), first);
    let got = runner.wait(rows).unwrap();
    let got: Vec<Vec<f32>> = (0..prompt.len())
        .map(|i| got.row(i).expect("kept").to_vec())
        .collect();
    let grown = runner.readback_capacity();
    let need = (prompt.len() * (4 + vocab * 4)) as u64;
    assert!(
        grown.iter().any(|&b| b >= need) && grown.iter().any(|&b| b == small[0]),
        "{grown:?}: one buffer grown to {need} bytes, the other as it was"
    );
    // Both buffers serve row-keeping steps from now on, one after the other.
    for _ in 0..3 {
        let again = runner.forward(&step(LogitRows::All)).unwrap();
        assert_eq!(
            again.row(prompt.len() - 1).unwrap(),
            &got[prompt.len() - 1][..]
        );
    }
    assert!(runner.readback_capacity().iter().all(|&b| b >= need));
    table.release(&mut pool).unwrap();
    // The rows equal those of a fresh scoring run.
    assert_eq!(got, g.logits(&prompt).unwrap());
}

/// Loading reports progress in bytes of the file's tensors: never decreasing, ending at the
/// total (the sum of the tensors' sizes) once every weight is on the GPU.
#[test]
fn load_progress_counts_the_bytes_of_the_tensors() {
    use wllm::loader::TensorSource;
    for dir in ["tiny-llama-gqa-public", "tiny-gpt2-public"] {
        let path = fixtures().join(dir);
        let hf = wllm::loader::hf::HfModelDir::open(&path).unwrap();
        let want: usize = hf
            .tensor_names()
            .iter()
            .map(|n| hf.tensor_byte_len(n).unwrap())
            .sum();
        let mut seen: Vec<(usize, usize)> = Vec::new();
        let opts = ModelOptions::new(&path);
        Generator::load(gpu(), &opts, &mut |done, total| seen.push((done, total))).unwrap();
        assert!(seen.len() > 2, "{dir}: {} progress calls", seen.len());
        assert!(
            seen.iter().all(|&(_, t)| t == want),
            "{dir}: total is not {want}"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "{dir}: decreasing"
        );
        assert!(seen[0].0 < want, "{dir}: no step before the end");
        assert_eq!(
            seen.last().unwrap().0,
            want,
            "{dir}: does not end at the total"
        );
    }
}
