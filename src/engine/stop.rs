//! Stop strings over streamed text: text that could still turn into a stop string is held
//! back, and the stop string itself is never emitted.

/// Incremental matcher for one request's stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted (it may be the start of a stop string).
    pending: String,
}

/// What one push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopResult {
    /// Text safe to emit now (may be empty).
    Continue(String),
    /// A stop string matched: emit this text (everything before it) and finish.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stops.is_empty() {
            return StopResult::Continue(text.to_string());
        }
        self.pending.push_str(text);
        // The earliest complete stop string wins.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopResult::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopResult::Continue(out)
    }

    /// The generation ended without a stop string: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`,
/// cut on character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopResult::Continue(t) => out.push_str(&t),
                StopResult::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Paris", ".", "\n", "\nThe"]),
            ("Paris.".into(), true)
        );
        assert_eq!(
            run(&["END"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
    }

    #[test]
    fn held_back_text_is_released_when_it_diverges_or_ends() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("go ST"), StopResult::Continue("go ".into()));
        assert_eq!(m.push("ay"), StopResult::Continue("STay".into()));
        assert_eq!(m.push(" S"), StopResult::Continue(" ".into()));
        assert_eq!(m.finish(), "S");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(
            run(&["日本"], &["こんにちは日", "本語"]),
            ("こんにちは".into(), true)
        );
        assert_eq!(run(&["é!"], &["café", " ok"]), ("café ok".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
