//! Redis-compatible glob matching, for invalidation patterns.
//!
//! Every token but `*` matches exactly one byte, so on a mismatch only the last `*` needs to take one more
//! byte: no state but the last star's is kept, and no path is ever tried twice. A match takes at most
//! `O(pattern × text)` steps (each text position restarts the pattern after the last star at most once),
//! never exponentially many, whatever the stars: patterns are at most 1024 bytes and keys 2048.

/// Redis-compatible glob matching (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\x`), on bytes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star_p, mut star_t) = (usize::MAX, 0usize);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = p;
                    star_t = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        if star_p == usize::MAX {
            return false;
        }
        p = star_p + 1;
        star_t += 1;
        t = star_t;
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the class starting at `pattern[start] == b'['`; returns (matched, index after `]`),
/// or `None` if the class is not closed.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = if pattern[i] <= pattern[i + 2] {
                (pattern[i], pattern[i + 2])
            } else {
                (pattern[i + 2], pattern[i])
            };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    None
}

/// The reference [`glob_match`] is checked against: the same tokens (`*`, `?`, a class, an escaped or plain
/// byte), matched by the plain dynamic program over prefixes of the pattern and of the text.
#[cfg(any(test, feature = "fuzzing"))]
pub fn glob_match_reference(pattern: &[u8], text: &[u8]) -> bool {
    enum Token {
        Star,
        Any,
        /// A closed class, starting at this index of the pattern.
        Class(usize),
        Byte(u8),
    }
    let mut tokens = Vec::new();
    let mut p = 0;
    while p < pattern.len() {
        let (token, next) = match pattern[p] {
            b'*' => (Token::Star, p + 1),
            b'?' => (Token::Any, p + 1),
            b'[' => match match_class(pattern, p, 0) {
                Some((_, next)) => (Token::Class(p), next),
                None => (Token::Byte(b'['), p + 1),
            },
            b'\\' if p + 1 < pattern.len() => (Token::Byte(pattern[p + 1]), p + 2),
            c => (Token::Byte(c), p + 1),
        };
        tokens.push(token);
        p = next;
    }
    // row[j]: the tokens so far match text[..j].
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for token in &tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Star => {
                let mut reached = false;
                for (j, cell) in next.iter_mut().enumerate() {
                    reached |= row[j];
                    *cell = reached;
                }
            }
            one => {
                for (j, &c) in text.iter().enumerate() {
                    next[j + 1] = row[j]
                        && match one {
                            Token::Any => true,
                            Token::Class(start) => {
                                match_class(pattern, *start, c).is_some_and(|(matched, _)| matched)
                            }
                            Token::Byte(b) => *b == c,
                            Token::Star => unreachable!(),
                        };
                }
            }
        }
        row = next;
    }
    row[text.len()]
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match(b"cache:*", b"cache:x:y"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[^a-c]x", b"bx"));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(!glob_match(b"a\\*", b"ab"));
        assert!(glob_match(b"*:user:7*", b"metadata:42:user:7:project:1"));
        assert!(!glob_match(b"metadata:4", b"metadata:42"));
    }

    /// Patterns that make a backtracking matcher that retries every star exponential: here each is a few
    /// million steps at most (milliseconds), at the largest pattern and key lengths accepted.
    #[test]
    fn pathological_patterns_stay_polynomial() {
        let many_stars = format!("{}*b", "*a".repeat(511));
        let long_tail = format!("*{}b", "a".repeat(1022));
        let nested = format!("{}b", "*a?".repeat(341));
        let text = "a".repeat(2048);
        for pattern in [&many_stars, &long_tail, &nested] {
            assert!(pattern.len() <= crate::keys::MAX_PATTERN_BYTES);
            let start = Instant::now();
            assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
            let mut matching = text.clone();
            matching.push('b');
            assert!(glob_match(pattern.as_bytes(), matching.as_bytes()));
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{took:?} for {pattern:.20}..."
            );
        }
    }

    #[test]
    fn reference_agrees_on_the_examples() {
        for (pattern, text) in [
            ("cache:*", "cache:x:y"),
            ("a?c", "abc"),
            ("a?c", "ac"),
            ("[a-c]x", "bx"),
            ("[^a-c]x", "bx"),
            ("a\\*", "a*"),
            ("a\\*", "ab"),
            ("[ab", "[ab"),
            ("[]]", "]"),
            ("*:user:7*", "metadata:42:user:7:project:1"),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                glob_match_reference(pattern.as_bytes(), text.as_bytes()),
                "{pattern} {text}"
            );
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(
            p in "[ab*?\\[\\]\\\\^-]{0,12}",
            t in "[ab\\[\\]*?^-]{0,16}",
        ) {
            prop_assert_eq!(
                glob_match(p.as_bytes(), t.as_bytes()),
                glob_match_reference(p.as_bytes(), t.as_bytes())
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn glob_never_panics(p in "[a-c*?\\[\\]\\\\^-]{0,8}", t in "[a-c\\[\\]]{0,8}") {
            let _ = glob_match(p.as_bytes(), t.as_bytes());
        }
    }
}
