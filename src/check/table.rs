//! The support table: `wllm check --json` reports of any number of adapters (this machine's,
//! or files collected from others) as one Markdown table, a row per kernel and form, a column
//! per adapter. Built from the JSON, which is the report's stable form, so reports from older
//! or newer wllm builds and other machines merge.

use serde_json::Value;

/// One cell: every case of a kernel and form on one adapter.
#[derive(Default)]
struct Cell {
    pass: usize,
    fail: usize,
    expected_fail: usize,
    unsupported: Option<String>,
}

impl Cell {
    fn text(&self) -> String {
        let total = self.pass + self.fail;
        if self.fail > 0 {
            let expected = if self.expected_fail == self.fail {
                ", expected"
            } else {
                ""
            };
            return format!("FAIL ({} of {total}{expected})", self.fail);
        }
        match (&self.unsupported, self.pass) {
            (Some(why), 0) => format!("UNSUPPORTED ({why})"),
            (_, 0) => "-".into(),
            _ => "PASS".into(),
        }
    }
}

/// The Markdown table of `reports` (each one `wllm check --json` object, `{"adapters":
/// [...]}`), adapters in order.
pub fn support_table(reports: &[Value]) -> Result<String, String> {
    let mut adapters: Vec<&Value> = Vec::new();
    for r in reports {
        let list = r["adapters"]
            .as_array()
            .ok_or("not a `wllm check --json` report: no \"adapters\" list")?;
        adapters.extend(list);
    }
    if adapters.is_empty() {
        return Err("no adapters in the reports".into());
    }
    // Rows in order of first appearance; a cell per (row, adapter).
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    let mut row_of = |kernel: String, form: String, cells: &mut Vec<Vec<Cell>>| -> usize {
        let key = (kernel, form);
        match rows.iter().position(|r| *r == key) {
            Some(i) => i,
            None => {
                rows.push(key);
                cells.push((0..adapters.len()).map(|_| Cell::default()).collect());
                rows.len() - 1
            }
        }
    };
    for (col, a) in adapters.iter().enumerate() {
        let results = a["results"]
            .as_array()
            .ok_or("an adapter without \"results\"")?;
        for r in results {
            let field = |k: &str| r[k].as_str().unwrap_or("?").to_string();
            let row = row_of(field("kernel"), field("form"), &mut cells);
            let cell = &mut cells[row][col];
            match r["status"].as_str() {
                Some("PASS") => cell.pass += 1,
                Some("FAIL") => {
                    cell.fail += 1;
                    if r["expected_failure"].as_bool() == Some(true) {
                        cell.expected_fail += 1;
                    }
                }
                Some("UNSUPPORTED") => {
                    cell.unsupported = Some(r["detail"].as_str().unwrap_or("?").to_string())
                }
                other => return Err(format!("unknown status {other:?}")),
            }
        }
        for m in a["models"].as_array().into_iter().flatten() {
            let name = m["model"].as_str().unwrap_or("?");
            let row = row_of(
                format!("model: {name}"),
                m["dtype"].as_str().unwrap_or("?").into(),
                &mut cells,
            );
            let cell = &mut cells[row][col];
            match m["status"].as_str() {
                Some("PASS") => cell.pass += 1,
                Some("UNSUPPORTED") => {
                    cell.unsupported = Some(m["detail"].as_str().unwrap_or("?").to_string())
                }
                _ => cell.fail += 1,
            }
        }
    }
    let mut out = String::from("| kernel | form |");
    for a in &adapters {
        let s = |k: &str| a[k].as_str().unwrap_or("?").replace('|', "/");
        out += &format!(" {} [{}] {} |", s("name"), s("backend"), s("driver_info"));
    }
    out += "\n|---|---|";
    out += &"---|".repeat(adapters.len());
    out.push('\n');
    for ((kernel, form), cells) in rows.iter().zip(&cells) {
        out += &format!("| {kernel} | {form} |");
        for c in cells {
            out += &format!(" {} |", c.text().replace('|', "/"));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_adapters_into_one_row_per_kernel_and_form() {
        let case = |kernel: &str, form: &str, status: &str| {
            json!({"kernel": kernel, "form": form, "case": "c", "status": status,
                   "detail": "shader-f16"})
        };
        let a = json!({"adapters": [{"name": "A", "backend": "Vulkan", "driver_info": "1",
            "results": [case("matmul", "f32", "PASS"), case("matmul", "f32", "FAIL"),
                        case("matmul", "f16", "PASS")],
            "models": [{"model": "tiny", "dtype": "f32", "status": "PASS"}]}]});
        let b = json!({"adapters": [{"name": "B", "backend": "Gl", "driver_info": "2",
            "results": [case("matmul", "f32", "PASS"), case("matmul", "f16", "UNSUPPORTED")]}]});
        let t = support_table(&[a, b]).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| kernel | form | A [Vulkan] 1 | B [Gl] 2 |");
        assert_eq!(lines[2], "| matmul | f32 | FAIL (1 of 2) | PASS |");
        assert_eq!(
            lines[3],
            "| matmul | f16 | PASS | UNSUPPORTED (shader-f16) |"
        );
        assert_eq!(lines[4], "| model: tiny | f32 | PASS | - |");
        assert_eq!(lines.len(), 5);
        assert!(support_table(&[json!({"x": 1})]).is_err());
    }
}
