//! The snapshot file (tests/fixtures/snapshots/logits.json, keyed by adapter) and the full-row
//! dumps a recording leaves under target/tmp/logits-snapshot/.

use std::path::PathBuf;

use super::*;
use crate::common::read_json;

pub(super) fn snapshot_path() -> PathBuf {
    fixtures().join("snapshots").join("logits.json")
}

pub(super) fn dump_dir(adapter: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("logits-snapshot")
        .join(sanitize(adapter))
}

pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

pub(super) fn json_f32(v: Option<f32>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "null".into(),
    }
}

pub(super) fn hex(h: u64) -> String {
    format!("{h:016x}")
}

pub(super) fn write_record(s: &mut String, r: &Record) {
    match r {
        Record::Logits {
            vocab,
            rows,
            last_row_head,
        } => {
            let head: Vec<String> = last_row_head.iter().map(|v| json_f32(*v)).collect();
            let _ = writeln!(s, "{{");
            let _ = writeln!(s, "        \"kind\": \"logits\",");
            let _ = writeln!(s, "        \"vocab\": {vocab},");
            let _ = writeln!(s, "        \"last_row_head\": [{}],", head.join(", "));
            let _ = writeln!(s, "        \"rows\": [");
            for (i, row) in rows.iter().enumerate() {
                let comma = if i + 1 < rows.len() { "," } else { "" };
                let _ = writeln!(
                    s,
                    "          [\"{}\", {}, {}]{comma}",
                    hex(row.hash),
                    row.argmax,
                    json_f32(row.max)
                );
            }
            let _ = writeln!(s, "        ]");
            let _ = write!(s, "      }}");
        }
        Record::Tokens {
            outputs,
            logprobs_hash,
        } => {
            let _ = writeln!(s, "{{");
            let _ = writeln!(s, "        \"kind\": \"tokens\",");
            let lh = logprobs_hash.map_or("null".into(), |h| json_str(&hex(h)));
            let _ = writeln!(s, "        \"logprobs_hash\": {lh},");
            let _ = writeln!(s, "        \"outputs\": [");
            for (i, o) in outputs.iter().enumerate() {
                let comma = if i + 1 < outputs.len() { "," } else { "" };
                let _ = writeln!(s, "          {}{comma}", serde_json::to_string(o).unwrap());
            }
            let _ = writeln!(s, "        ]");
            let _ = write!(s, "      }}");
        }
    }
}

pub(super) fn render(adapters: &BTreeMap<String, BTreeMap<String, Record>>) -> String {
    let mut s = String::new();
    s.push_str("{\n");
    s.push_str("  \"format\": 1,\n");
    let _ = writeln!(
        s,
        "  \"about\": {},",
        json_str(&format!(
            "Bit-exact logits snapshot written by tests/logits_snapshot.rs ({RECORD_CMD}). \
             Logits rows: [FNV-1a 64 of the f32 bit patterns (LE bytes), argmax, max logit]. \
             Keyed by adapter: name | driver | driver info | backend."
        ))
    );
    s.push_str("  \"adapters\": {\n");
    for (ai, (adapter, cases)) in adapters.iter().enumerate() {
        let _ = writeln!(s, "    {}: {{", json_str(adapter));
        for (ci, (key, rec)) in cases.iter().enumerate() {
            let _ = write!(s, "      {}: ", json_str(key));
            write_record(&mut s, rec);
            s.push_str(if ci + 1 < cases.len() { ",\n" } else { "\n" });
        }
        s.push_str(if ai + 1 < adapters.len() {
            "    },\n"
        } else {
            "    }\n"
        });
    }
    s.push_str("  }\n}\n");
    s
}

pub(super) fn parse_f32(v: &serde_json::Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

pub(super) fn parse_hash(v: &serde_json::Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hash string"), 16).expect("hex hash")
}

pub(super) fn parse_record(v: &serde_json::Value) -> Record {
    match v["kind"].as_str().expect("kind") {
        "logits" => Record::Logits {
            vocab: v["vocab"].as_u64().expect("vocab") as usize,
            last_row_head: v["last_row_head"]
                .as_array()
                .expect("last_row_head")
                .iter()
                .map(parse_f32)
                .collect(),
            rows: v["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| RowRecord {
                    hash: parse_hash(&r[0]),
                    argmax: r[1].as_u64().expect("argmax") as usize,
                    max: parse_f32(&r[2]),
                })
                .collect(),
        },
        "tokens" => Record::Tokens {
            outputs: v["outputs"]
                .as_array()
                .expect("outputs")
                .iter()
                .map(common::ids)
                .collect(),
            logprobs_hash: (!v["logprobs_hash"].is_null()).then(|| parse_hash(&v["logprobs_hash"])),
        },
        k => panic!("unknown record kind {k}"),
    }
}

pub(super) fn load_snapshot() -> BTreeMap<String, BTreeMap<String, Record>> {
    let path = snapshot_path();
    if !path.exists() {
        return BTreeMap::new();
    }
    let v = read_json(&path);
    assert_eq!(
        v["format"].as_u64(),
        Some(1),
        "{}: unknown format",
        path.display()
    );
    v["adapters"]
        .as_object()
        .expect("adapters")
        .iter()
        .map(|(a, cases)| {
            let cases = cases
                .as_object()
                .expect("cases")
                .iter()
                .map(|(k, r)| (k.clone(), parse_record(r)))
                .collect();
            (a.clone(), cases)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Full-row dumps (not committed; for exact differences on the recording machine)

pub(super) fn write_dump(adapter: &str, key: &str, rows: &Rows) {
    let dir = dump_dir(adapter);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = Vec::with_capacity(rows.len() * rows[0].len() * 4);
    for r in rows {
        for v in r {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    std::fs::write(dir.join(format!("{}.f32", sanitize(key))), bytes).unwrap();
}

/// The dumped rows of a case, if present and consistent with the recorded hashes.
pub(super) fn read_dump(
    adapter: &str,
    key: &str,
    recorded: &[RowRecord],
    vocab: usize,
) -> Option<Rows> {
    let bytes = std::fs::read(dump_dir(adapter).join(format!("{}.f32", sanitize(key)))).ok()?;
    if vocab == 0 || bytes.len() != recorded.len() * vocab * 4 {
        return None;
    }
    let rows: Rows = bytes
        .chunks_exact(vocab * 4)
        .map(|r| {
            r.chunks_exact(4)
                .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        })
        .collect();
    rows.iter()
        .zip(recorded)
        .all(|(r, rec)| hash_row(r) == rec.hash)
        .then_some(rows)
}
