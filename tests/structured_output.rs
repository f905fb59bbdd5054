//! Structured output through the engine on SmolLM2 (a real 49k vocabulary): every response
//! to a JSON schema parses and validates (greedy and sampled), regex / choice / Lark grammars
//! hold, a grammar does not change what its batch neighbours generate nor what it generates
//! beside them, on the GPU sampling path and the CPU one, with overlapped steps. Bad grammars
//! are refused at submit. `logit_bias` moves the greedy pick.

mod common;

use common::{gpu, smollm2_path};
use serde_json::{Value, json};
use wllm::engine::{Engine, EngineConfig, Prompt, Request};
use wllm::tokenizer::ChatMessage;
use wllm::{Error, FinishReason, Grammar, SamplingParams};

fn engine(gpu_sampling: bool) -> Engine {
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.model.max_seqs = 8;
    cfg.gpu_sampling = Some(gpu_sampling);
    cfg.overlap_steps = Some(true);
    Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
}

fn chat(text: &str, max_tokens: usize, temperature: f32, seed: u64) -> Request {
    let mut r = Request::new(Prompt::Chat(vec![ChatMessage::user(text)]));
    r.max_tokens = max_tokens;
    r.sampling = SamplingParams {
        temperature,
        seed,
        ..Default::default()
    };
    r
}

/// Nested objects, an array, an enum, integers and a bounded number; lengths bounded so a
/// 135M model finishes well inside its token budget.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "London", "Tokyo"]},
            "score": {"type": "number", "minimum": 0, "maximum": 10},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 24},
                    "zip": {"type": "integer", "minimum": 10000, "maximum": 99999}
                },
                "required": ["street", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "city", "score", "tags", "address"],
        "additionalProperties": false
    })
}

/// A validator for the keywords the schemas here use (written for this test: the engine's
/// grammar comes from llguidance, so this is an independent check).
fn validate(v: &Value, s: &Value, path: &str) -> Result<(), String> {
    let bad = |what: String| Err(format!("{path}: {what} (value {v})"));
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return bad("not in the enum".into());
        }
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(o) = v.as_object() else {
                return bad("not an object".into());
            };
            let props = s["properties"].as_object().cloned().unwrap_or_default();
            for r in s["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return bad(format!("missing {r}"));
                }
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(ps) => validate(x, ps, &format!("{path}.{k}"))?,
                    None if s["additionalProperties"] == json!(false) => {
                        return bad(format!("extra property {k}"));
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else {
                return bad("not an array".into());
            };
            if num("maxItems").is_some_and(|m| a.len() as f64 > m) {
                return bad("too many items".into());
            }
            for (i, x) in a.iter().enumerate() {
                validate(x, &s["items"], &format!("{path}[{i}]"))?;
            }
        }
        Some("string") => {
            let Some(t) = v.as_str() else {
                return bad("not a string".into());
            };
            let n = t.chars().count() as f64;
            if num("maxLength").is_some_and(|m| n > m) || num("minLength").is_some_and(|m| n < m) {
                return bad("length out of bounds".into());
            }
        }
        Some(t @ ("integer" | "number")) => {
            let Some(x) = v.as_f64() else {
                return bad("not a number".into());
            };
            if t == "integer" && !(v.is_i64() || v.is_u64()) {
                return bad("not an integer".into());
            }
            if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
                return bad("out of range".into());
            }
        }
        Some(t) => return bad(format!("the test's validator does not know type {t}")),
        None => {}
    }
    Ok(())
}

fn structured(text: &str, grammar: Grammar, temperature: f32, seed: u64) -> Request {
    let mut r = chat(text, 160, temperature, seed);
    r.grammar = Some(grammar);
    r
}

/// Runs requests together; (ids, text, finish reason) each.
fn run_together(e: &Engine, reqs: &[Request]) -> Vec<(Vec<u32>, String, FinishReason)> {
    let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    handles
        .into_iter()
        .map(|h| {
            let c = h.wait().unwrap();
            (c.output_ids, c.text, c.finish_reason)
        })
        .collect()
}

const PROMPTS: [&str; 3] = [
    "Describe a person who lives in a big city, as JSON.",
    "Give me a JSON record for a fictional customer.",
    "Who is Marie? Answer in JSON.",
];

fn schema_requests() -> Vec<Request> {
    let mut reqs = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        reqs.push(structured(p, Grammar::JsonSchema(person_schema()), 0.0, 0));
        reqs.push(structured(
            p,
            Grammar::JsonSchema(person_schema()),
            0.9,
            i as u64,
        ));
    }
    reqs
}

fn check_schema_outputs(outs: &[(Vec<u32>, String, FinishReason)]) {
    for (i, (_, text, reason)) in outs.iter().enumerate() {
        assert_eq!(
            *reason,
            FinishReason::Stop,
            "request {i} did not finish: {text}"
        );
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("request {i}: not JSON ({e}): {text}"));
        validate(&v, &person_schema(), "$").unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
}

/// Constrained requests alone, then together with unconstrained ones: every response
/// validates, and nobody's tokens change with the company (GPU and CPU sampling paths).
fn check_schema_and_invariance(gpu_sampling: bool) {
    let e = engine(gpu_sampling);
    let constrained = schema_requests();
    let alone: Vec<_> = constrained
        .iter()
        .map(|r| run_together(&e, std::slice::from_ref(r)).remove(0))
        .collect();
    check_schema_outputs(&alone);
    let free = [
        chat("Write a haiku about the sea.", 24, 0.0, 0),
        chat("What is 2 + 2?", 24, 0.8, 5),
    ];
    let free_alone: Vec<_> = free
        .iter()
        .map(|r| run_together(&e, std::slice::from_ref(r)).remove(0))
        .collect();
    let mut mixed: Vec<Request> = constrained.clone();
    mixed.insert(1, free[0].clone());
    mixed.push(free[1].clone());
    let together = run_together(&e, &mixed);
    let mut want = alone.clone();
    want.insert(1, free_alone[0].clone());
    want.push(free_alone[1].clone());
    for (i, (t, w)) in together.iter().zip(&want).enumerate() {
        assert_eq!(t.0, w.0, "request {i}: tokens differ batched vs alone");
    }
    // Sampled requests took other paths than greedy (the sampling is live under a grammar).
    assert!((0..3).any(|i| alone[2 * i].0 != alone[2 * i + 1].0));
    let st = e.stats();
    assert_eq!(st.blocks_used, 0);
    // With every row picked on the GPU, constrained steps still overlap: the forward pass is
    // submitted before the masks, which follow once the step before is read back.
    if gpu_sampling {
        assert!(
            st.overlapped_steps > 100,
            "{} steps overlapped",
            st.overlapped_steps
        );
    }
}

#[test]
fn json_schema_outputs_validate_and_are_batch_invariant_gpu_sampling() {
    check_schema_and_invariance(true);
}

#[test]
fn json_schema_outputs_validate_and_are_batch_invariant_cpu_sampling() {
    check_schema_and_invariance(false);
}

/// Regex, choice, Lark and any-JSON-object grammars hold; the same requests give the same
/// tokens whichever side samples.
#[test]
fn regex_choice_lark_and_json_object_grammars_hold() {
    let reqs = vec![
        structured(
            "What is your phone number?",
            Grammar::Regex(r"[0-9]{3}-[0-9]{4}".into()),
            0.7,
            3,
        ),
        structured(
            "Is Paris in France?",
            Grammar::Choice(vec!["yes".into(), "no".into(), "not sure".into()]),
            0.0,
            0,
        ),
        structured(
            "Name a colour.",
            Grammar::Lark(
                r#"start: "Colour: " COLOR "!"
COLOR: "red" | "green" | "blue""#
                    .into(),
            ),
            1.0,
            7,
        ),
        structured("Tell me about cats in JSON.", Grammar::JsonObject, 0.0, 0),
    ];
    let gpu_out = run_together(&engine(true), &reqs);
    let cpu_out = run_together(&engine(false), &reqs);
    for (i, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
        assert_eq!(g.0, c.0, "request {i}: GPU vs CPU sampling under a grammar");
        assert_eq!(g.2, FinishReason::Stop, "request {i}: {}", g.1);
    }
    let t: Vec<&str> = gpu_out.iter().map(|o| o.1.as_str()).collect();
    let phone = t[0].as_bytes();
    assert!(
        phone.len() == 8
            && phone[3] == b'-'
            && phone
                .iter()
                .enumerate()
                .all(|(i, b)| i == 3 || b.is_ascii_digit()),
        "{:?}",
        t[0]
    );
    assert!(["yes", "no", "not sure"].contains(&t[1]), "{:?}", t[1]);
    assert!(
        ["Colour: red!", "Colour: green!", "Colour: blue!"].contains(&t[2]),
        "{:?}",
        t[2]
    );
    let obj: Value = serde_json::from_str(t[3]).unwrap_or_else(|e| panic!("{e}: {}", t[3]));
    assert!(obj.is_object(), "{obj}");
}

#[test]
fn bad_grammars_and_biases_are_refused_at_submit() {
    let e = engine(true);
    let bad = [
        Grammar::Lark("start: (".into()),
        Grammar::Regex("(".into()),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
        Grammar::JsonSchema(json!(42)),
        Grammar::Choice(vec![]),
    ];
    for g in bad {
        let r = structured("hi", g.clone(), 0.0, 0);
        match e.submit(r) {
            Err(Error::InvalidRequest(m)) => assert!(!m.is_empty()),
            Err(other) => panic!("{g:?}: {other}"),
            Ok(_) => panic!("{g:?} was accepted"),
        }
    }
    let vocab = e.model_config().vocab_size as u32;
    for bias in [vec![(vocab, 1.0)], vec![(5, 101.0)], vec![(5, f32::NAN)]] {
        let mut r = chat("hi", 4, 0.0, 0);
        r.logit_bias = bias.clone();
        assert!(
            matches!(e.submit(r), Err(Error::InvalidRequest(_))),
            "{bias:?}"
        );
    }
    assert_eq!(e.stats().blocks_used, 0);
}

/// -100 on the greedy first token makes another token first; +100 on a token makes it the
/// first; the same on both sampling paths.
#[test]
fn logit_bias_moves_the_greedy_pick() {
    for gpu_sampling in [true, false] {
        let e = engine(gpu_sampling);
        let base = chat("What is the capital of France?", 3, 0.0, 0);
        let first = e.generate(base.clone()).unwrap().output_ids[0];
        let mut banned = base.clone();
        banned.logit_bias = vec![(first, -100.0)];
        let out = e.generate(banned).unwrap().output_ids;
        assert_ne!(out[0], first, "gpu_sampling {gpu_sampling}");
        let mut forced = base.clone();
        forced.logit_bias = vec![(1234, 60.0), (1234, 40.0)];
        let out = e.generate(forced).unwrap().output_ids;
        assert!(
            out.iter().all(|&t| t == 1234),
            "gpu_sampling {gpu_sampling}: {out:?}"
        );
    }
}
