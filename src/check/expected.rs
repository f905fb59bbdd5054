//! Known driver problems (`expected_failures.json`, compiled in): which adapters fail which
//! kernels, and why. An entry matches when every field it gives is a case-insensitive substring
//! of the adapter's (or the case's) corresponding text.

use serde::Deserialize;

use crate::gpu::AdapterReport;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    pub backend: Option<String>,
    /// Matched against the adapter's name and its driver's name.
    pub vendor: Option<String>,
    pub adapter: Option<String>,
    /// Matched against the driver's name and its version text.
    pub driver: Option<String>,
    pub kernel: Option<String>,
    pub form: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code)]
    about: String,
    entries: Vec<ExpectedFailure>,
}

fn has(text: &str, pattern: &Option<String>) -> bool {
    pattern
        .as_ref()
        .is_none_or(|p| text.to_lowercase().contains(&p.to_lowercase()))
}

impl ExpectedFailure {
    pub fn matches(&self, a: &AdapterReport, kernel: &str, form: &str) -> bool {
        let vendor_text = format!("{} {}", a.name, a.driver);
        let driver_text = format!("{} {}", a.driver, a.driver_info);
        has(&a.backend, &self.backend)
            && has(&vendor_text, &self.vendor)
            && has(&a.name, &self.adapter)
            && has(&driver_text, &self.driver)
            && has(kernel, &self.kernel)
            && has(form, &self.form)
    }
}

/// Parses a list in `expected_failures.json`'s format.
pub fn parse_expected_failures(json: &str) -> Result<Vec<ExpectedFailure>, String> {
    serde_json::from_str::<File>(json)
        .map(|f| f.entries)
        .map_err(|e| format!("expected_failures.json: {e}"))
}

/// The list shipped in the binary.
pub fn expected_failures() -> Vec<ExpectedFailure> {
    // Checked by a unit test, so a broken file never ships.
    parse_expected_failures(include_str!("expected_failures.json")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> AdapterReport {
        AdapterReport {
            name: "AMD Radeon RX 7900 XTX (RADV NAVI31)".into(),
            backend: "Vulkan".into(),
            driver: "radv".into(),
            driver_info: "Mesa 24.0.5".into(),
            ..AdapterReport::default()
        }
    }

    #[test]
    fn the_shipped_list_parses() {
        parse_expected_failures(include_str!("expected_failures.json")).unwrap();
    }

    #[test]
    fn an_entry_matches_every_field_it_gives() {
        let list = parse_expected_failures(
            r#"{"about": "", "entries": [
                {"backend": "vulkan", "vendor": "radv", "driver": "mesa 24.0", "kernel": "sample",
                 "reason": "subgroup ballot bug"}
            ]}"#,
        )
        .unwrap();
        let a = adapter();
        assert!(list[0].matches(&a, "sample", "gpu forms"));
        assert!(!list[0].matches(&a, "argmax", "gpu forms"));
        let mut newer = adapter();
        newer.driver_info = "Mesa 24.1.0".into();
        assert!(!list[0].matches(&newer, "sample", "gpu forms"));
        assert!(parse_expected_failures(r#"{"about": "", "entries": [{"kernel": "x"}]}"#).is_err());
        assert!(
            parse_expected_failures(r#"{"about": "", "entries": [{"reason": "r", "gpu": "x"}]}"#)
                .is_err()
        );
    }
}
