//! Replays the fuzzers' findings: every file under `tests/fixtures/fuzz-regressions/<target>/`
//! goes through the same entry code as `cargo fuzz run <target>` (tests/fuzz_entry/mod.rs) and
//! must come back `Ok` or a clean `Err` — no panic, no abort, no hang.
//!
//! Each file runs in a child process (this test binary again, running only `replay_child`), so
//! an abort (allocation failure, stack overflow) or a hang fails that one file, and the parent
//! names every failing file with the tail of its output. In the child the counting allocator
//! refuses a single allocation over 1 GiB and a live total over 2 GiB, as libFuzzer's
//! `-malloc_limit_mb=1024 -rss_limit_mb=2048` did; a child running past 10 s (override with
//! `WLLM_FUZZ_REPLAY_TIMEOUT_S`) is killed, as `-timeout=10` did.
//!
//! `WLLM_FUZZ_CORPUS=tests/fixtures/fuzz-open cargo test --release --test fuzz_regressions`
//! replays the open findings (expected to fail until they are fixed) instead.
//!
//! `cargo test --release --test fuzz_regressions -- --ignored write_fuzz_seeds` writes the seed
//! corpora `fuzz/corpus/<target>/` from the real model files (see fuzz/README.md).

mod fuzz_entry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuzz_entry::{CountingAlloc, TARGETS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const CHILD_ENV: &str = "WLLM_FUZZ_REPLAY";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_files() -> Vec<(String, PathBuf)> {
    // WLLM_FUZZ_CORPUS=tests/fixtures/fuzz-open replays the open findings instead.
    let dir = std::env::var("WLLM_FUZZ_CORPUS");
    let base = root().join(dir.as_deref().unwrap_or("tests/fixtures/fuzz-regressions"));
    let mut out = Vec::new();
    for (target, _) in TARGETS {
        let Ok(dir) = std::fs::read_dir(base.join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|p| (target.to_string(), p)));
    }
    out
}

/// Runs in the child: one file through one entry, under the allocation limits.
#[test]
fn replay_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (target, path) = spec.split_once(':').expect("target:path");
    let data = std::fs::read(path).expect("reading the regression input");
    let entry = fuzz_entry::entry(target).expect("known target");
    fuzz_entry::set_limits(1 << 30, 2 << 30);
    let result = entry(&data);
    fuzz_entry::set_limits(usize::MAX, usize::MAX);
    match result {
        Ok(()) => println!("REPLAY-RESULT: Ok"),
        Err(e) => println!("REPLAY-RESULT: clean Err: {e}"),
    }
}

struct Running {
    target: String,
    path: PathBuf,
    child: Child,
    started: Instant,
    out: PathBuf,
}

#[test]
fn regression_corpus_replays_cleanly() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let files = corpus_files();
    let timeout = Duration::from_secs(
        std::env::var("WLLM_FUZZ_REPLAY_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let exe = std::env::current_exe().unwrap();
    let logs = fuzz_entry::Scratch::new("replay-logs");
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let mut pending = files.iter().enumerate().rev().collect::<Vec<_>>();
    let mut running: Vec<Running> = Vec::new();
    let mut failures = Vec::new();
    let mut passed = 0;
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < parallel {
            let Some((i, (target, path))) = pending.pop() else {
                break;
            };
            let out = logs.0.join(format!("{i}.log"));
            let log = std::fs::File::create(&out).unwrap();
            let child = Command::new(&exe)
                .args(["replay_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{target}:{}", path.display()))
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning the replay child");
            running.push(Running {
                target: target.clone(),
                path: path.clone(),
                child,
                started: Instant::now(),
                out,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let status = r.child.try_wait().unwrap();
            let timed_out = status.is_none() && r.started.elapsed() > timeout;
            if status.is_none() && !timed_out {
                i += 1;
                continue;
            }
            if timed_out {
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
            let r = running.swap_remove(i);
            let log = std::fs::read_to_string(&r.out).unwrap_or_default();
            let name = rel(&r.path);
            let ok = !timed_out
                && status.is_some_and(|s| s.success())
                && log.contains("REPLAY-RESULT: ");
            if ok {
                passed += 1;
                let line = log.lines().find(|l| l.starts_with("REPLAY-RESULT: "));
                eprintln!("ok   [{}] {name}: {}", r.target, line.unwrap_or_default());
            } else {
                let why = if timed_out {
                    format!("timed out after {timeout:?}")
                } else {
                    format!("exited with {}", status.unwrap())
                };
                let tail: String = tail_lines(&log, 25);
                failures.push(format!("[{}] {name}: {why}\n{tail}", r.target));
            }
        }
    }
    eprintln!(
        "{passed} regression inputs replayed cleanly, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} fuzz regression inputs panic, abort or hang:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.starts_with("running ") && !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Seed corpora (not a check: writes fuzz/corpus/<target>/)

#[test]
#[ignore = "writes the fuzz seed corpora; run by hand, see fuzz/README.md"]
fn write_fuzz_seeds() {
    seeds::write_all(&root());
}

mod seeds {
    use super::fuzz_entry::*;
    use std::path::Path;
    use wllm::loader::MetaValue;
    use wllm::loader::gguf::GgufFile;

    const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

    fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
        let dir = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        eprintln!("seed {target}/{name}: {} bytes", bytes.len());
    }

    fn fixture(rel: &str) -> Option<std::path::PathBuf> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel);
        p.exists().then_some(p)
    }

    /// The metadata of a rewritten GGUF (for the line-format vocabulary seeds).
    fn meta_of(bytes: &[u8]) -> wllm::loader::GgufMetadata {
        let s = Scratch::new("seed");
        GgufFile::open(s.write("x.gguf", bytes)).unwrap().metadata
    }

    pub fn write_all(root: &Path) {
        let texts = [
            SAMPLE_TEXT,
            "The capital of France is Paris. 12345 + 678 = 13023",
        ];
        // --- gguf / gguf_vocab
        let tiny = tiny_llama_gguf().bytes;
        put(root, "gguf", "tiny-llama.gguf", &tiny);
        put(root, "gguf_vocab", "tiny-llama.gguf", &tiny);
        put(
            root,
            "gguf_vocab",
            "tiny-llama.txt",
            vocab_to_lines(&meta_of(&tiny), &texts).as_bytes(),
        );
        let mut gpt2 = GgufBuilder::new();
        for (k, v) in [
            ("general.architecture", MetaValue::String("gpt2".into())),
            ("gpt2.block_count", MetaValue::U32(2)),
            ("gpt2.context_length", MetaValue::U32(1024)),
            ("gpt2.embedding_length", MetaValue::U32(64)),
            ("gpt2.feed_forward_length", MetaValue::U32(256)),
            ("gpt2.attention.head_count", MetaValue::U32(4)),
            ("gpt2.attention.layer_norm_epsilon", MetaValue::F32(1e-5)),
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("gpt-2".into())),
            (
                "tokenizer.ggml.tokens",
                MetaValue::Array(
                    ["a", "b", "ab", "Ġ", "<|endoftext|>"]
                        .map(|s| MetaValue::String(s.into()))
                        .to_vec(),
                ),
            ),
            (
                "tokenizer.ggml.merges",
                MetaValue::Array(vec![MetaValue::String("a b".into())]),
            ),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(4)),
        ] {
            gpt2.kv(k, v);
        }
        gpt2.tensor("token_embd.weight", &[5, 64], 0, vec![0; 5 * 64 * 4])
            .tensor("position_embd.weight", &[16, 64], 1, vec![0; 16 * 64 * 2]);
        put(root, "gguf", "tiny-gpt2.gguf", &gpt2.build().bytes);

        let smol = root.join(SMOLLM2);
        if let Ok(bytes) = std::fs::read(&smol) {
            // Header only: the metadata section is the first ~2 MB of the 98 MB file.
            let head = &bytes[..bytes.len().min(4 << 20)];
            put(root, "gguf", "smollm2-first-64k.gguf", &bytes[..64 << 10]);
            let full = rewrite_gguf_header(head, None).expect("rewriting SmolLM2's header");
            let small = rewrite_gguf_header(head, Some(600)).unwrap();
            put(root, "gguf", "smollm2-600-tokens.gguf", &small);
            put(root, "gguf_vocab", "smollm2-600-tokens.gguf", &small);
            let meta = meta_of(&small);
            put(
                root,
                "gguf_vocab",
                "smollm2-600-tokens.txt",
                vocab_to_lines(&meta, &texts).as_bytes(),
            );
            let full_meta = meta_of(&full);
            if let Ok(t) = full_meta.get_str("tokenizer.chat_template") {
                put(root, "chat_template", "smollm2.jinja", t.as_bytes());
            }
            eprintln!(
                "(SmolLM2 metadata rewritten in full: {} bytes; not a seed)",
                full.len()
            );
        } else {
            eprintln!("{SMOLLM2} is missing: run models/fetch_smollm2.sh for its seeds");
        }
        for name in [
            "tiny-llama3.Q4_K_M",
            "tiny-qwen2.Q4_K_M",
            "tiny-qwen3.f16",
            "tiny-phi3.f16",
        ] {
            let Some(p) = fixture(&format!("arch/gguf/{name}.gguf")) else {
                continue;
            };
            let bytes = std::fs::read(p).unwrap();
            let g = rewrite_gguf_header(&bytes, None).unwrap();
            put(root, "gguf", &format!("{name}.gguf"), &g);
            let meta = meta_of(&g);
            put(
                root,
                "gguf_vocab",
                &format!("{name}.txt"),
                vocab_to_lines(&meta, &texts).as_bytes(),
            );
            if let Ok(t) = meta.get_str("tokenizer.chat_template") {
                put(
                    root,
                    "chat_template",
                    &format!("{name}.jinja"),
                    t.as_bytes(),
                );
            }
        }

        // --- hf
        for name in [
            "tiny-llama-gqa-public",
            "tiny-gpt2-public",
            "arch/tiny-llama3",
            "arch/tiny-mistral",
            "arch/tiny-qwen2",
        ] {
            let Some(dir) = fixture(name) else { continue };
            let config = std::fs::read(dir.join("config.json")).unwrap();
            let st = std::fs::read(dir.join("model.safetensors")).unwrap();
            let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
            let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
            for (k, v) in header.as_object().unwrap() {
                if k == "__metadata__" {
                    continue;
                }
                let dtype = v["dtype"].as_str().unwrap().to_string();
                let elem = match dtype.as_str() {
                    "F32" | "I32" => 4,
                    "F16" | "BF16" => 2,
                    _ => 8,
                };
                tensors.push((k.clone(), dtype, vec![2, 2], vec![0x3c; 4 * elem]));
            }
            let view = |t: &[(String, String, Vec<usize>, Vec<u8>)]| -> Vec<u8> {
                let v: Vec<(&str, &str, &[usize], &[u8])> = t
                    .iter()
                    .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_slice(), d.as_slice()))
                    .collect();
                safetensors_bytes(&v)
            };
            let tag = name.rsplit('/').next().unwrap();
            let single = view(&tensors);
            put(
                root,
                "hf",
                &format!("{tag}-single"),
                &join_hf(&config, b"", &[&single]),
            );
            put(root, "hf", &format!("{tag}-config-only"), &config);
            let half = tensors.len() / 2;
            let (a, b) = tensors.split_at(half);
            let mut map = serde_json::Map::new();
            for (i, part) in [a, b].iter().enumerate() {
                for t in part.iter() {
                    map.insert(t.0.clone(), shard_name(i, 2).into());
                }
            }
            let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
            let index = serde_json::to_vec_pretty(&index).unwrap();
            put(
                root,
                "hf",
                &format!("{tag}-sharded"),
                &join_hf(&config, &index, &[&view(a), &view(b)]),
            );
        }

        // --- chat_template
        put(
            root,
            "chat_template",
            "chatml.jinja",
            CHATML_TEMPLATE.as_bytes(),
        );
        for (name, t) in TEMPLATES {
            put(root, "chat_template", name, t.as_bytes());
        }
    }

    /// Hand-written templates using what real ones use: tojson, strftime_now, raise_exception,
    /// namespace, macros, loop controls, pycompat string methods, slicing, filters.
    const TEMPLATES: &[(&str, &str)] = &[
        (
            "llama3-style.jinja",
            "{{- bos_token }}\n{%- if not date_string is defined %}{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- endif %}\n{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{%- if tools is not none %}{{- tools | tojson(indent=4) }}{%- endif %}{{- system_message }}{{- \"<|eot_id|>\" }}\n{%- for message in messages %}{%- if not (message.role == 'user' or message.role == 'assistant') %}{{- raise_exception('bad role ' + message.role) }}{%- endif %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}\n{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\n",
        ),
        (
            "qwen-style.jinja",
            "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == \"user\" and not(message.content.startswith('<tool_response>')) %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}\n{%- for message in messages %}{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}{%- if loop.index0 > ns.last_query_index %}{{- '<|im_start|>' + message.role + '\\n' + content.split('</think>')[-1].lstrip('\\n') }}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}\n{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n",
        ),
        (
            "macros-loops.jinja",
            "{% macro render(m, i) -%}[{{ i }}:{{ m.role|upper }}] {{ m.content|replace('\\n', ' ')|length }}{{ m.content[:40] }}{%- endmacro %}{% for m in messages %}{% if loop.index is even %}{% continue %}{% endif %}{{ render(m, loop.index) }}{% if loop.length > 10 %}{% break %}{% endif %}\n{% endfor %}{{ messages|map(attribute='role')|join(',') }}{{ (messages|last).content[:5] }}{{ '%s-%d'|format('x', 3) }}{{ range(3)|list|tojson }}{{ {'a': 1, 'b': [1, 2]}|tojson(indent=2) }}{{ messages[0].content.title().center(40) }}{{ 'a,b'.split(',')|length }}{% set x = messages|selectattr('role', 'equalto', 'user')|list %}{{ x|length }}{{ eos_token if add_generation_prompt else '' }}",
        ),
        (
            "gemma-style.jinja",
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
        ),
    ];
}
