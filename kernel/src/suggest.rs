//! "Did you mean ...?" suggestions: the one place that decides when a typo is close enough.

/// The candidate closest to `input`, if one is close enough to be a likely typo.
///
/// Distance is optimal string alignment (Levenshtein plus adjacent transpositions, so `biuld`
/// is one edit from `build`), compared case-insensitively. A candidate qualifies when the
/// distance is at most a third of the input's length (at least 1), the rule cargo and rustc
/// use, so short words are not "corrected" into unrelated ones. Ties go to the earlier
/// candidate, which keeps suggestions stable for the caller's order.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_lower: Vec<char> = input.to_lowercase().chars().collect();
    let max_distance = (input_lower.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == input {
            // Suggesting the very word the user wrote helps no one.
            continue;
        }
        let candidate_lower: Vec<char> = candidate.to_lowercase().chars().collect();
        let distance = osa_distance(&input_lower, &candidate_lower);
        if distance <= max_distance && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each cost one.
fn osa_distance(a: &[char], b: &[char]) -> usize {
    // Three rolling rows: the transposition case looks two rows back.
    let mut before_prev: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before_prev[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before_prev, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, candidates: &[&str], expected: Option<&str>) {
        assert_eq!(
            did_you_mean(input, candidates.iter().copied()),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn suggests_close_typos_and_nothing_for_unrelated_words() {
        let keys = [
            "run",
            "needs",
            "dir",
            "env",
            "timeout",
            "allow_failure",
            "limits",
            "retry",
        ];
        check("tmeout", &keys, Some("timeout"));
        check("timeuot", &keys, Some("timeout"));
        check("need", &keys, Some("needs"));
        check("Run", &keys, Some("run"));
        check("allow-failure", &keys, Some("allow_failure"));
        check("biuld", &["build", "test"], Some("build"));
        check("banana", &keys, None);
        check("x", &keys, None);
        check("", &keys, None);
        check("run", &keys, None);
    }

    #[test]
    fn ties_go_to_the_earlier_candidate() {
        check("tast", &["test", "task"], Some("test"));
        check("tast", &["task", "test"], Some("task"));
    }

    #[test]
    fn distance_counts_adjacent_swaps_as_one_edit() {
        let d = |a: &str, b: &str| {
            osa_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("", ""), 0);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("ab", "ba"), 1);
        assert_eq!(d("abcd", "acbd"), 1);
        assert_eq!(d("héllo", "hello"), 1);
    }
}
