//! The `wllm` binary's contracts, as scripts use them: JSON shapes, input order, errors.

mod common;

use std::process::Command;

use common::cli::{wllm, wllm_with_env};
use common::{fixtures, smollm2_path};
use serde_json::Value;

fn tiny_llama() -> String {
    fixtures()
        .join("tiny-llama-gqa-public")
        .display()
        .to_string()
}

#[test]
fn generate_json_score_and_tokenize_contracts() {
    let model = tiny_llama();
    let (ok, out, err) = wllm(&[
        "generate",
        "--model",
        &model,
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "5",
        "--dtype",
        "f32",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["prompt_ids"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["output_ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["text"].is_string());

    let (ok, out, err) = wllm(&[
        "score",
        "--model",
        &model,
        "--prompt-ids",
        "4,5,6,7",
        "--top-k",
        "3",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let pos = v["positions"].as_array().unwrap();
    assert_eq!(pos.len(), 4);
    assert_eq!(pos[0]["ids"].as_array().unwrap().len(), 3);
    let l: Vec<f64> = pos[0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(l[0] >= l[1] && l[1] >= l[2]);

    let gguf = smollm2_path().display().to_string();
    let (ok, out, err) = wllm(&["tokenize", "--model", &gguf, "The capital of France is"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[504,3575,282,4649,314]");
    // `--no-special`: `<|im_start|>` is text, not SmolLM2's special token 1.
    let (ok, out, err) = wllm(&["tokenize", "--model", &gguf, "<|im_start|>user"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[1,4093]");
    let (ok, out, err) = wllm(&[
        "tokenize",
        "--model",
        &gguf,
        "--no-special",
        "<|im_start|>user",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[44,108,306,79,3738,108,46,4093]");
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = tiny_llama();
    let (ok, _, err) = wllm(&[
        "generate",
        "--model",
        "/no/such/model.gguf",
        "--prompt-ids",
        "1",
    ]);
    assert!(!ok && err.contains("/no/such/model.gguf"), "{err}");
    let (ok, _, err) = wllm(&["generate", "--model", &model, "--prompt-ids", "1,999999"]);
    assert!(!ok && err.contains("vocabulary"), "{err}");
    let (ok, _, err) = wllm(&[
        "generate",
        "--model",
        &model,
        "--prompt-ids",
        "1",
        "--block-size",
        "24",
    ]);
    assert!(!ok && err.contains("power of two"), "{err}");
    assert!(!err.contains("panicked"));
}

/// `WLLM_KV_POOL` / `WLLM_QUANT_WEIGHTS`: a value wllm does not know, or texture pools where
/// the kernels cannot read them, is an error before anything runs; pools in textures and in
/// buffers give the same tokens.
#[test]
fn storage_overrides_are_checked_and_agree() {
    let model = tiny_llama();
    let args = [
        "generate",
        "--model",
        &model,
        "--prompt-ids",
        "1,2,3,4,5,6,7,8,9",
        "--max-tokens",
        "6",
        "--block-size",
        "4",
        "--json",
    ];
    for (name, value) in [("WLLM_KV_POOL", "textures"), ("WLLM_QUANT_WEIGHTS", "tex")] {
        let (ok, _, err) = wllm_with_env(&args, &[(name, value)]);
        assert!(!ok && err.contains(name) && err.contains(value), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let gpu_forms = [("WLLM_KV_POOL", "texture"), ("WLLM_KERNEL_FORMS", "gpu")];
    let (ok, _, err) = wllm_with_env(&args, &gpu_forms);
    assert!(!ok && err.contains("CPU kernel forms"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let ids = |pool: &str| {
        let env = [("WLLM_KV_POOL", pool), ("WLLM_KERNEL_FORMS", "cpu")];
        let (ok, out, err) = wllm_with_env(&args, &env);
        assert!(ok, "WLLM_KV_POOL={pool}: {err}");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        v["output_ids"].clone()
    };
    let textures = ids("texture");
    assert_eq!(textures.as_array().map(Vec::len), Some(6));
    assert_eq!(textures, ids("buffer"));
}

#[test]
fn batch_keeps_input_order_reports_bad_lines_and_prints_stats() {
    let dir = std::env::temp_dir().join(format!("wllm-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let mut lines = vec![];
    for i in 0..10 {
        lines.push(format!(r#"{{"id": {i}, "prompt_ids": [{}, 7, 9, 11, 13, 15, 17, 19, 21, 23], "max_tokens": {}}}"#, 10 + i, 5 + i));
    }
    lines.insert(3, "this is not json".to_string());
    lines.insert(5, r#"{"id": "empty", "prompt_ids": []}"#.to_string());
    lines.insert(
        7,
        r#"{"id": "text", "prompt": "no tokenizer here"}"#.to_string(),
    );
    lines.push(r#"{"id": "cache", "prompt_ids": [1, 2], "cache": "forever"}"#.to_string());
    std::fs::write(&input, lines.join("\n")).unwrap();
    let model = tiny_llama();
    let (ok, _, err) = wllm(&[
        "batch",
        "--model",
        &model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--kv-blocks",
        "12",
        "--block-size",
        "4",
        "--max-num-seqs",
        "8",
        "--max-num-batched-tokens",
        "32",
        "--stats",
    ]);
    assert!(ok, "{err}");
    let results: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 14);
    assert!(
        results[13]["error"]
            .as_str()
            .unwrap()
            .contains("cache must be")
    );
    assert!(results[3]["error"].as_str().unwrap().contains("malformed"));
    assert_eq!(results[5]["id"], "empty");
    assert!(results[5]["error"].as_str().unwrap().contains("empty"));
    assert!(results[7]["error"].is_string());
    let ok_rows: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("error").is_none())
        .collect();
    assert_eq!(ok_rows.len(), 10);
    for (i, r) in ok_rows.iter().enumerate() {
        assert_eq!(r["id"], i);
        assert_eq!(r["output_ids"].as_array().unwrap().len(), 5 + i);
        assert_eq!(r["finish_reason"], "length");
    }
    let stats: Value = serde_json::from_str(err.trim().lines().last().unwrap()).unwrap();
    assert!(
        stats["preemptions"].as_u64().unwrap() > 0,
        "12 blocks of 4 for 10 sequences: {stats}"
    );
    assert!(stats["kv_waste_pct"].is_number());
    assert_eq!(stats["blocks_used"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_compares_preallocation_with_paging() {
    let gguf = smollm2_path().display().to_string();
    let (ok, out, err) = wllm(&[
        "plan",
        "--model",
        &gguf,
        "--kv-memory",
        "2GiB",
        "--context",
        "8192",
        "--avg-tokens",
        "600",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    // 30 layers × 2 (K, V) × 192 KV dims × 2 bytes
    assert_eq!(v["kv_bytes_per_token"], 23040);
    // 2 GiB / (8192 × 23040) = 11.4 → 11; paged: 600 tokens = 38 blocks of 16 → 2 GiB / (38 × 16 × 23040) = 153.3 → 153
    assert_eq!(v["preallocated_seqs"], 11);
    assert_eq!(v["paged_seqs"], 153);
    // Q4_1 matrices and a Q8_0 embedding in their GPU block layout: about the file's size
    // (the engine measured 100.3 MiB on lavapipe, dense row padding and textures included).
    let weights = v["weights_bytes"].as_u64().unwrap() as f64;
    let file = std::fs::metadata(smollm2_path()).unwrap().len() as f64;
    assert!(
        (0.95 * file..1.05 * file).contains(&weights),
        "weights {weights} vs file {file}"
    );
}

#[test]
fn bench_throughput_mixed_lengths_arriving_over_time() {
    let model = tiny_llama();
    let (ok, out, err) = wllm(&[
        "bench",
        "throughput",
        "--model",
        &model,
        "--dtype",
        "f32",
        "--requests",
        "3",
        "--prompt-len",
        "4..8",
        "--output-len",
        "2..4",
        "--request-rate",
        "50",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["concurrency"], 2);
    assert_eq!(v["request_rate"], 50.0);
    assert_eq!(v["prompt_len_range"], serde_json::json!([4, 7]));
    assert_eq!(v["output_len_range"], serde_json::json!([2, 3]));
    let lens = |k: &str| -> Vec<u64> {
        v["workload"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (prompt_lens, output_lens) = (lens("prompt_lens"), lens("output_lens"));
    assert_eq!(prompt_lens.len(), 3);
    assert!(prompt_lens.iter().all(|l| (4..8).contains(l)));
    assert!(output_lens.iter().all(|l| (2..4).contains(l)));
    let arrivals = v["workload"]["arrival_s"].as_array().unwrap();
    assert_eq!(arrivals[0], 0.0);
    assert!(arrivals[2].as_f64().unwrap() > 0.0);
    let expected: u64 = output_lens.iter().sum();
    assert_eq!(v["expected_output_tokens"], expected);
    for (side, seqs) in [("batched", 2), ("baseline", 1)] {
        let r = &v[side];
        assert_eq!(r["max_num_seqs"], seqs, "{side}");
        assert_eq!(r["output_tokens"], expected, "{side}: ignore_eos");
        assert_eq!(
            r["prompt_tokens"],
            prompt_lens.iter().sum::<u64>(),
            "{side}"
        );
        assert_eq!(r["completed"], 3, "{side}");
        assert_eq!(r["refused"], 0, "{side}");
        assert_eq!(r["failed"], 0, "{side}");
        for k in [
            "output_tokens_per_s",
            "requests_per_s",
            "total_tokens_per_s",
            "ttft_ms_p50",
            "e2e_ms_p99",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{side}.{k}");
        }
        assert!(r["itl_ms_p99"].as_f64().unwrap() >= r["itl_ms_p50"].as_f64().unwrap());
        assert!(r["peak_blocks_used"].as_u64().unwrap() >= 1, "{side}");
        assert!(r["preemptions"].is_u64(), "{side}");
    }
    assert!(v["throughput_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn benches_sample_on_the_gpu_when_asked() {
    let model = tiny_llama();
    let (ok, out, err) = wllm(&[
        "bench",
        "decode",
        "--model",
        &model,
        "--dtype",
        "f32",
        "--batch",
        "1,3",
        "--prompt-len",
        "5",
        "--gen-len",
        "4",
        "--repeat",
        "1",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["sampling"]["top_k"], 20);
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    for side in ["gpu", "cpu"] {
        let (ok, out, err) = wllm(&[
            "bench",
            "throughput",
            "--model",
            &model,
            "--dtype",
            "f32",
            "--requests",
            "3",
            "--prompt-len",
            "4",
            "--output-len",
            "3",
            "--concurrency",
            "3",
            "--no-baseline",
            "--temperature",
            "0.9",
            "--top-k",
            "20",
            "--sample-on",
            side,
            "--json",
        ]);
        assert!(ok, "{side}: {err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["sampling"]["on"], side);
        assert_eq!(v["batched"]["completed"], 3, "{side}");
        assert_eq!(v["batched"]["output_tokens"], 9, "{side}");
    }
    // Parameters no sampler can apply are refused with a message, not a panic.
    let (ok, _, err) = wllm(&[
        "bench",
        "decode",
        "--model",
        &model,
        "--batch",
        "1",
        "--gen-len",
        "2",
        "--repeat",
        "1",
        "--top-p",
        "0",
        "--temperature",
        "1",
    ]);
    assert!(!ok && err.contains("top_p"), "{err}");
}

/// Kills the spawned server when the test ends, passing or not.
#[cfg(feature = "server")]
struct Child(std::process::Child);

#[cfg(feature = "server")]
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `GET`/`POST` over a fresh connection: the status and the body (the server closes).
#[cfg(feature = "server")]
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the port answers once listening");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let body = if method == "POST" {
        r#"{"prompt":[1,2],"max_tokens":2}"#
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Starts `wllm serve` on the tiny model and an ephemeral port with `extra` flags: the server,
/// the address from its `listening` line, and its later stderr lines.
#[cfg(feature = "server")]
fn spawn_serve(extra: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    use std::process::Stdio;
    let model = tiny_llama();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_wllm"))
            .args(["serve", "--model", &model, "--port", "0"])
            .args(extra)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run wllm serve"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a listening line");
        if let Some(rest) = line.strip_prefix("wllm: listening on http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    (child, addr, rx)
}

#[cfg(feature = "server")]
#[test]
fn serve_answers_health_from_the_listening_line_while_the_model_loads() {
    let (_child, addr, _lines) = spawn_serve(&[]);
    let wait = std::time::Duration::from_secs(120);
    // From the listening line on, the port answers: loading, then ok.
    let deadline = std::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let (status, body) = http(&addr, "GET", "/health");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        match (status, v["status"].as_str()) {
            (503, Some("loading")) => {
                // Every other route refuses with a JSON 503 meanwhile.
                let (status, body) = http(&addr, "POST", "/v1/completions");
                if status == 503 {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["error"]["code"], "model_loading", "{body}");
                }
                seen.push("loading");
            }
            (200, Some("ok")) => {
                seen.push("ok");
                break;
            }
            other => panic!("unexpected /health answer {other:?}: {body}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    eprintln!("/health answered {} times loading", seen.len() - 1);
    let (status, body) = http(&addr, "POST", "/v1/completions");
    assert_eq!(status, 200, "{body}");
}

#[cfg(feature = "server")]
#[test]
fn serve_refuses_a_bad_cors_origin() {
    let (ok, _, err) = wllm(&[
        "serve",
        "--model",
        &tiny_llama(),
        "--cors-origin",
        "http://localhost:3000,localhost:4000",
    ]);
    assert!(!ok && err.contains("localhost:4000"), "{err}");
}

#[cfg(feature = "server")]
#[test]
fn sigterm_stops_accepting_and_lets_a_stream_in_flight_finish() {
    use std::io::{Read, Write};
    let (mut child, addr, lines) = spawn_serve(&["--shutdown-grace", "60"]);
    let wait = std::time::Duration::from_secs(120);
    while !lines
        .recv_timeout(wait)
        .expect("a serving line")
        .starts_with("wllm: serving")
    {}
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let body = r#"{"prompt":[1,2,3],"max_tokens":400,"ignore_eos":true,"stream":true}"#;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The stream has started: its head and a first chunk are here.
    let mut first = vec![0u8; 256];
    let n = s.read(&mut first).unwrap();
    let mut raw = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        raw.push_str(&rest);
        raw
    });
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    // New connections are refused soon after the signal.
    assert!(
        wait_for(|| std::net::TcpStream::connect(&addr).is_err()),
        "still accepting after SIGTERM"
    );
    eprintln!(
        "stream still in flight when refused: {}",
        !reader.is_finished()
    );
    let raw = reader.join().unwrap();
    assert!(raw.contains("data: [DONE]"), "the stream was cut: {raw}");
    assert!(raw.contains(r#""finish_reason":"length""#), "{raw}");
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let said: Vec<String> = lines.iter().collect();
    assert!(
        said.iter()
            .any(|l| l.starts_with("wllm: SIGTERM: finishing")),
        "{said:?}"
    );
}

/// Polls `f` for up to 30 s.
#[cfg(feature = "server")]
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// The disk tier as a desktop app meets it: the same long prompt in a new process reuses the
/// KV the first process persisted, with the same output (SmolLM2, the reference model).
#[test]
fn a_restarted_process_reuses_the_persisted_prompt_from_the_kv_cache_dir() {
    let dir = common::temp_dir::TempDir::new("cli-kv-dir");
    let model = smollm2_path().display().to_string();
    let dir_arg = dir.0.display().to_string();
    // 41 tokens: (41 - 1) / 16 = 2 full blocks can be reused.
    let ids: Vec<String> = (0..41).map(|i| (1000 + i * 37).to_string()).collect();
    let ids = ids.join(",");
    let run = |cap: &str| {
        let (ok, out, err) = wllm(&[
            "generate",
            "--model",
            &model,
            "--prompt-ids",
            &ids,
            "--max-tokens",
            "4",
            "--kv-blocks",
            "32",
            "--kv-cache-dir",
            &dir_arg,
            "--kv-persist-min-tokens",
            "32",
            "--kv-cache-max",
            cap,
            "--json",
        ]);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(out.trim()).unwrap()
    };
    let first = run("1GiB");
    assert_eq!(first["cached_tokens"], 0);
    let second = run("1GiB");
    assert_eq!(second["cached_tokens"], 32, "{second}");
    assert_eq!(second["output_ids"], first["output_ids"]);
    // A cap of one file keeps the chain's first block: 16 tokens come back.
    let block_files = || {
        let ns = std::fs::read_dir(&dir.0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read_dir(ns).unwrap().count()
    };
    assert_eq!(block_files(), 2);
    let third = run("1");
    assert_eq!(third["cached_tokens"], 16, "{third}");
    assert_eq!(third["output_ids"], first["output_ids"]);
    assert_eq!(block_files(), 1);
    // A bad size is refused before anything loads.
    let (ok, _, err) = wllm(&[
        "generate",
        "--model",
        &model,
        "--prompt-ids",
        "1",
        "--kv-host-memory",
        "lots",
    ]);
    assert!(!ok && err.contains("--kv-host-memory"), "{err}");
}

/// `wllm bench tiers` end to end on the tiny model: every tier hits and gives the cold tokens.
#[test]
fn bench_tiers_reports_every_tier_on_the_tiny_model() {
    let model = tiny_llama();
    let (ok, out, err) = wllm(&[
        "bench",
        "tiers",
        "--model",
        &model,
        "--prompt-tokens",
        "64",
        "--kv-blocks",
        "16",
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["identical"], true);
    let modes = v["modes"].as_array().unwrap();
    let cached: Vec<f64> = modes
        .iter()
        .map(|m| m["cached_tokens"].as_f64().unwrap())
        .collect();
    // (64 - 1) / 16 = 3 blocks reused by every hit.
    assert_eq!(cached, vec![0.0, 48.0, 48.0, 48.0], "{v}");
    assert!(v["host_restores"].as_u64().unwrap() >= 3);
    assert!(v["decode_step_ms"].as_f64().unwrap() > 0.0);
}
