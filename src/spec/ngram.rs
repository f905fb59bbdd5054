//! Prompt-lookup drafting (n-gram speculation): text that repeats — code being edited, a
//! document being summarized or quoted, a list continuing its pattern — is drafted from the
//! sequence's own tokens, with no second model.

/// Up to `k` tokens that followed the latest earlier occurrence of the last n tokens of
/// `tokens`, for the largest n in `min_n..=max_n` that occurs; empty when none does. O(len ·
/// max_n) per call.
pub fn ngram_draft(tokens: &[u32], min_n: usize, max_n: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || min_n == 0 {
        return Vec::new();
    }
    for n in (min_n..=max_n.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Latest start i < len − n (the suffix itself excluded) whose n tokens match.
        if let Some(i) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = i + n;
            return tokens[from..(from + k).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_latest_longest_match() {
        // "1 2 3 4 5 ... 1 2 3" → 4 5 (the 3-gram match), cut at k.
        let t = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(ngram_draft(&t, 1, 3, 2), vec![4, 5]);
        assert_eq!(ngram_draft(&t, 1, 3, 10), vec![4, 5, 9, 9, 1, 2, 3]);
        // The latest occurrence wins: 7 8 follows "1 2" last.
        let t = [1, 2, 3, 1, 2, 7, 8, 1, 2];
        assert_eq!(ngram_draft(&t, 2, 2, 2), vec![7, 8]);
        // A longer match beats a later shorter one.
        let t = [5, 1, 2, 3, 6, 0, 2, 3, 4, 5, 1, 2, 3];
        assert_eq!(ngram_draft(&t, 1, 4, 1), vec![6]);
        // The match may run into the suffix itself (a repeating token).
        assert_eq!(ngram_draft(&[7, 7, 7], 1, 2, 3), vec![7]);
        // Nothing repeats, or n is out of range.
        assert!(ngram_draft(&[1, 2, 3, 4], 1, 3, 4).is_empty());
        assert!(ngram_draft(&[1, 2, 1, 2], 3, 3, 4).is_empty());
        assert!(ngram_draft(&[1], 1, 3, 4).is_empty());
        assert!(ngram_draft(&[], 1, 3, 4).is_empty());
        assert!(ngram_draft(&[1, 2, 1, 2], 1, 3, 0).is_empty());
    }
}
