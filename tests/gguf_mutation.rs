//! Mutated GGUF headers must fail cleanly and cheaply.
//!
//! A valid small llama GGUF (tests/fuzz_entry: SmolLM2-like metadata scaled down, a byte-level
//! BPE vocabulary, the ChatML template, one layer of tiny F32/F16/Q8_0/Q4_0/Q4_1 tensors) is
//! mutated — random bytes overwritten in the header, a length / count / dimension / offset set to
//! a huge value (2^31, 2^32, 2^40, 2^60, 2^63, u64::MAX, …), a type tag changed, the file cut at
//! a random point, a chunk spliced in from elsewhere, a hyper-parameter or token id set to a
//! hostile value — and fed to the fuzz harness's GGUF entry: `GgufFile::open`,
//! `ModelConfig::from_gguf`, the GGUF tokenizer builder and a short encode / decode. Each must
//! return `Ok` or a clean `Err` (no panic), with the heap's peak at most 64 MiB above where it
//! was before the case (this binary's global allocator counts live and peak bytes).
//!
//! A case that asks for a single allocation over 1 GiB (or 4 GiB live) aborts the process with
//! "memory allocation of N bytes failed"; the input of the case is then left in
//! `/dev/shm/wllm-fuzz-<pid>-gguf-*/model.gguf`.

mod fuzz_entry;

use std::sync::{Mutex, OnceLock};

use fuzz_entry::{BuiltGguf, CountingAlloc, FieldKind, GgufBuilder};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wllm::loader::MetaValue;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Heap growth allowed per case.
const PEAK_BUDGET: usize = 64 << 20;

/// The two tests share the allocation counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn base() -> &'static BuiltGguf {
    static B: OnceLock<BuiltGguf> = OnceLock::new();
    B.get_or_init(fuzz_entry::tiny_llama_gguf)
}

/// Runs one mutated file through the GGUF entry; `Ok(heap growth)`, or `Err` describing an
/// over-allocation (a panic propagates).
fn check(bytes: &[u8]) -> Result<usize, String> {
    let baseline = fuzz_entry::reset_peak();
    fuzz_entry::set_limits(1 << 30, baseline + (4 << 30));
    let result = fuzz_entry::gguf(bytes);
    fuzz_entry::set_limits(usize::MAX, usize::MAX);
    let grew = fuzz_entry::peak_bytes().saturating_sub(baseline);
    if grew > PEAK_BUDGET {
        return Err(format!(
            "peak heap {} MiB above baseline (budget {} MiB); entry returned {result:?}",
            grew >> 20,
            PEAK_BUDGET >> 20
        ));
    }
    Ok(grew)
}

/// Values a hostile header writes into a field of `width` bytes.
fn hostile_values(width: usize, original: u64, file_len: usize) -> Vec<u64> {
    let mut v = vec![0, 1, original.wrapping_add(1), original.wrapping_sub(1)];
    match width {
        1 => v.extend([2, 0x7f, 0x80, 0xff]),
        2 => v.extend([0x7fff, 0x8000, 0xffff]),
        4 => v.extend([
            2,
            3,
            4,
            5,
            13,
            30,
            31,
            39,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
        ]),
        _ => v.extend([
            file_len as u64,
            1 << 31,
            1 << 32,
            1 << 40,
            1 << 60,
            1 << 63,
            u64::MAX,
            u64::MAX - 1,
            u64::MAX / 32,
        ]),
    }
    let mask = if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    v.iter_mut().for_each(|x| *x &= mask);
    v.sort_unstable();
    v.dedup();
    v
}

fn read_le(b: &[u8], pos: usize, width: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..width].copy_from_slice(&b[pos..pos + width]);
    u64::from_le_bytes(a)
}

fn write_le(b: &mut [u8], pos: usize, width: usize, v: u64) {
    b[pos..pos + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Fields worth sweeping exhaustively: everything but the per-element lengths of the long
/// token / merge / token-type arrays (their first three elements are kept).
fn structural_fields() -> Vec<fuzz_entry::Field> {
    let mut seen = std::collections::HashMap::<(String, String), usize>::new();
    base()
        .fields
        .iter()
        .filter(|f| {
            let bulk = f.owner.starts_with("tokenizer.ggml.")
                && matches!(f.kind, FieldKind::StrLen | FieldKind::IntValue);
            let n = seen
                .entry((f.owner.clone(), format!("{:?}", f.kind)))
                .or_default();
            *n += 1;
            !bulk || *n <= 4
        })
        .cloned()
        .collect()
}

#[test]
fn every_header_field_set_to_hostile_values() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = std::time::Instant::now();
    let b = base();
    check(&b.bytes).expect("the unmutated file");
    assert!(
        fuzz_entry::gguf(&b.bytes).is_ok(),
        "{:?}",
        fuzz_entry::gguf(&b.bytes)
    );
    let fields = structural_fields();
    let mut failures = Vec::new();
    let mut cases = 0;
    for f in &fields {
        let orig = read_le(&b.bytes, f.pos, f.width);
        for v in hostile_values(f.width, orig, b.bytes.len()) {
            let mut m = b.bytes.clone();
            write_le(&mut m, f.pos, f.width, v);
            cases += 1;
            let what = format!("{:?} of `{}` at byte {} = {v:#x}", f.kind, f.owner, f.pos);
            match std::panic::catch_unwind(|| check(&m)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failures.push(format!("{what}: {e}")),
                Err(p) => failures.push(format!("{what}: panicked: {}", panic_text(&p))),
            }
        }
    }
    eprintln!(
        "{cases} single-field mutations over {} fields in {:.2?}",
        fields.len(),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} hostile header fields panic or over-allocate:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The base file with one more metadata entry, a u8 array of `n` bytes, inserted before the
/// tensor infos (padded so the data section keeps its alignment).
fn with_byte_array(n: usize) -> Vec<u8> {
    let b = base();
    let key = "general.blob";
    let fixed = 8 + key.len() + 4 + 4 + 8;
    let n = (fixed + n).next_multiple_of(32) - fixed;
    let mut kv = Vec::with_capacity(fixed + n);
    kv.extend_from_slice(&(key.len() as u64).to_le_bytes());
    kv.extend_from_slice(key.as_bytes());
    kv.extend_from_slice(&9u32.to_le_bytes()); // array
    kv.extend_from_slice(&0u32.to_le_bytes()); // of u8
    kv.extend_from_slice(&(n as u64).to_le_bytes());
    kv.resize(fixed + n, 7);
    let mut out = b.bytes.clone();
    let kv_count = read_le(&out, 16, 8);
    write_le(&mut out, 16, 8, kv_count + 1);
    out.splice(b.tensor_infos_start..b.tensor_infos_start, kv);
    out
}

/// A metadata array of N one-byte values costs N bytes of file, and parsed it stays packed
/// (`MetaValue::Packed`), not a 32-byte `MetaValue` per element. A 4 MiB array is a plausible
/// header size (Llama 3's vocabulary alone is ~3 MB), so the heap it may take is held to the
/// same 64 MiB budget as every other case.
#[test]
fn a_large_byte_array_in_the_metadata_stays_within_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let small = with_byte_array(1000);
    assert!(
        fuzz_entry::gguf(&small).is_ok(),
        "{:?}",
        fuzz_entry::gguf(&small)
    );
    let big = with_byte_array(4 << 20);
    let r = check(&big);
    assert!(
        r.is_ok(),
        "4 MiB u8 array in the metadata: {}",
        r.unwrap_err()
    );
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

// ---------------------------------------------------------------------------------------------
// Random mutation sequences

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite `bytes` at a position in the header (before the data section).
    Overwrite { at: usize, bytes: Vec<u8> },
    /// Set recorded field `field` (index into the field map) to hostile value `pick`.
    SetField { field: usize, pick: usize },
    /// Cut the file at `at` (a fraction of its length, in 1/10000).
    Truncate { at: u32 },
    /// Copy `len` bytes from `from` over `to` (or insert them there).
    Splice {
        from: usize,
        len: usize,
        to: usize,
        insert: bool,
    },
    /// Delete `len` bytes at `at`.
    Delete { at: usize, len: usize },
}

/// Rebuild the file with one metadata entry replaced (semantic holes: huge context lengths,
/// layer counts, vocabulary ids, wrong value types).
#[derive(Debug, Clone)]
struct KeyEdit {
    key: &'static str,
    value: MetaValue,
}

const KEYS: &[&str] = &[
    "llama.context_length",
    "llama.block_count",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.vocab_size",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.scaling.type",
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.chat_template",
];

fn meta_value() -> impl Strategy<Value = MetaValue> {
    let big = prop::sample::select(vec![
        0u64,
        1,
        3,
        1 << 22,
        (1 << 22) + 1,
        1 << 31,
        1 << 32,
        1 << 40,
        1 << 60,
        1 << 63,
        u64::MAX,
    ]);
    prop_oneof![
        big.clone().prop_map(MetaValue::U64),
        big.prop_map(|v| MetaValue::U32(v as u32)),
        any::<i32>().prop_map(MetaValue::I32),
        prop::sample::select(vec![f32::NAN, f32::INFINITY, -1.0, 0.0, 1e-30, 3.4e38])
            .prop_map(MetaValue::F32),
        any::<bool>().prop_map(MetaValue::Bool),
        "[a-z0-9 ]{0,8}".prop_map(MetaValue::String),
        prop::collection::vec("[a-zĠ ]{0,3}", 0..6)
            .prop_map(|v| MetaValue::Array(v.into_iter().map(MetaValue::String).collect())),
        prop::collection::vec(any::<i8>(), 0..6).prop_map(|v| MetaValue::Array(
            v.into_iter().map(|x| MetaValue::I32(x as i32)).collect()
        )),
    ]
}

fn key_edit() -> impl Strategy<Value = KeyEdit> {
    (prop::sample::select(KEYS), meta_value()).prop_map(|(key, value)| KeyEdit { key, value })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let b = base();
    let header = b.data_start;
    let len = b.bytes.len();
    let n_fields = b.fields.len();
    prop_oneof![
        3 => (0..header, prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        4 => (0..n_fields, 0usize..32).prop_map(|(field, pick)| Mutation::SetField { field, pick }),
        1 => (0u32..10_000).prop_map(|at| Mutation::Truncate { at }),
        1 => (0..len, 1usize..64, 0..header, any::<bool>())
            .prop_map(|(from, len, to, insert)| Mutation::Splice { from, len, to, insert }),
        1 => (0..header, 1usize..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let b = base();
    match m {
        Mutation::Overwrite { at, bytes: new } => {
            for (i, x) in new.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *x;
                }
            }
        }
        Mutation::SetField { field, pick } => {
            // Field positions are those of the unmutated file; after a length-changing
            // mutation they may land elsewhere, which is one more kind of corruption.
            let f = &b.fields[*field];
            if f.pos + f.width <= bytes.len() {
                let orig = read_le(bytes, f.pos, f.width);
                let vals = hostile_values(f.width, orig, bytes.len());
                write_le(bytes, f.pos, f.width, vals[pick % vals.len()]);
            }
        }
        Mutation::Truncate { at } => {
            let n = bytes.len() * *at as usize / 10_000;
            bytes.truncate(n);
        }
        Mutation::Splice {
            from,
            len,
            to,
            insert,
        } => {
            let from = (*from).min(bytes.len());
            let chunk: Vec<u8> = bytes[from..(from + len).min(bytes.len())].to_vec();
            let to = (*to).min(bytes.len());
            if *insert {
                bytes.splice(to..to, chunk);
            } else {
                let end = (to + chunk.len()).min(bytes.len());
                bytes.splice(to..end, chunk);
            }
        }
        Mutation::Delete { at, len } => {
            let at = (*at).min(bytes.len());
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

fn rebuilt_with(edit: &KeyEdit) -> Vec<u8> {
    let b = base();
    // Re-derive the builder from the base's own metadata and tensors by parsing it.
    let dir = fuzz_entry::Scratch::new("rebuild");
    let file = wllm::loader::gguf::GgufFile::open(dir.write("b.gguf", &b.bytes)).unwrap();
    let mut g = GgufBuilder::new();
    for (k, v) in &file.metadata.entries {
        if k == edit.key {
            continue;
        }
        g.kv(k, v.clone());
    }
    g.kv(edit.key, edit.value.clone());
    if edit.key == "general.alignment" {
        g.alignment = 32; // the writer lays out data at 32; the file claims otherwise
    }
    for t in &file.tensors {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let data = file.tensor_bytes(&t.name).unwrap().to_vec();
        g.tensor(&t.name, &shape, t.ggml_type, data);
    }
    g.build().bytes
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        max_shrink_iters: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/gguf_mutation.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_gguf_headers_fail_cleanly(
        edit in prop::option::weighted(0.3, key_edit()),
        muts in prop::collection::vec(mutation(), 0..4),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = match &edit {
            Some(e) => rebuilt_with(e),
            None => base().bytes.clone(),
        };
        for m in &muts {
            apply(&mut bytes, m);
        }
        let r = check(&bytes);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
