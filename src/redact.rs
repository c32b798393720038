//! Secret redaction: whole values and streams.
//!
//! Every occurrence of every secret is found on bytes with an Aho-Corasick
//! overlapping search (run only in windows that a fast SIMD locator points
//! at). Occurrences that overlap or touch are merged and each merged range
//! becomes a single [`REDACTED`] marker, so no byte of any occurrence
//! survives, whatever the overlaps between secrets. Both automata are built
//! once per [`Redactor`] and shared by its clones and streams.
//!
//! [`StreamRedactor`] gives exactly the same output as [`Redactor::redact_bytes`]
//! on the concatenated input, however that input is split into chunks: it holds
//! back at most `max_secret_len - 1` bytes, so a secret split across reads is
//! still caught.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind, Span as AcSpan, packed};
use serde_json::Value;

/// What every secret is replaced with, so readers can see that something was
/// removed (and that it was not simply empty).
pub const REDACTED: &str = "[REDACTED]";

/// Minimum length (in chars) of a command `env` value for it to be treated as
/// a secret: short values like `1` or `true` are flags, and redacting them
/// would shred ordinary output.
pub const MIN_ENV_SECRET_LEN: usize = 8;

/// A half-open byte range `[start, end)` of the haystack to redact.
type Span = (usize, usize);

/// Bytes scanned by the exact overlapping search per located occurrence. At
/// least twice the longest secret is used, so each window moves the scan on
/// by more than the longest secret (any window of at least that is correct).
const WINDOW: usize = 512;

/// The compiled secret set, shared by every clone of a [`Redactor`].
#[derive(Debug)]
struct Matcher {
    secrets: Vec<String>,
    /// Exact: every occurrence, overlapping ones included.
    overlapping: AhoCorasick,
    /// Fast locator of the leftmost occurrence, so the slower overlapping
    /// search only runs near actual occurrences.
    locator: Locator,
    max_len: usize,
    /// Window length for the overlapping search: `WINDOW`, or small in tests.
    window: usize,
}

impl Matcher {
    /// Compiles sorted, deduplicated, non-empty secrets; `None` when there are none.
    fn build(secrets: Vec<String>, window: usize, allow_packed: bool) -> Option<Arc<Self>> {
        let max_len = secrets.iter().map(String::len).max()?;
        let automaton = |kind, prefilter| {
            AhoCorasick::builder()
                .match_kind(kind)
                .prefilter(prefilter)
                .build(&secrets)
                .expect("a handful of secrets is within aho-corasick's limits")
        };
        Some(Arc::new(Self {
            overlapping: automaton(MatchKind::Standard, false),
            locator: Locator::build(&secrets, allow_packed, || {
                automaton(MatchKind::LeftmostFirst, true)
            }),
            secrets,
            max_len,
            window: window.max(2 * max_len),
        }))
    }

    /// Fills `spans` with the merged ranges of all (overlapping) occurrences in
    /// `hay`, sorted and pairwise neither overlapping nor touching. `seed`, if
    /// any, is a prefix `[0, seed)` that already belongs to a redacted range.
    fn spans(&self, hay: &[u8], seed: Option<usize>, spans: &mut Vec<Span>) {
        spans.clear();
        spans.extend(seed.map(|end| (0, end)));
        let mut pos = 0;
        while let Some(start) = self.locator.leftmost_start(hay, pos) {
            pos = self.scan_window(hay, start, spans);
        }
    }

    /// Adds to `spans` every occurrence starting in `[from, next)` and returns
    /// `next` (> `from`). Such occurrences all lie in the scanned window.
    fn scan_window(&self, hay: &[u8], from: usize, spans: &mut Vec<Span>) -> usize {
        let end = hay.len().min(from + self.window);
        let next = if end == hay.len() {
            end
        } else {
            end + 1 - self.max_len
        };
        let window = Input::new(hay).range(from..end);
        for m in self.overlapping.find_overlapping_iter(window) {
            if m.start() < next {
                push_merged(spans, (m.start(), m.end()));
            }
        }
        next
    }
}

/// Finds where the leftmost occurrence starts, as fast as possible.
#[derive(Debug)]
enum Locator {
    /// SIMD (Teddy) search, when the CPU and the secret set allow it.
    Packed(packed::Searcher),
    /// Otherwise a leftmost-first automaton with aho-corasick's own prefilter.
    Automaton(AhoCorasick),
}

impl Locator {
    /// Prefers the packed searcher: the automaton's prefilter heuristics can
    /// pick a byte scan that crawls on text full of the secrets' first bytes.
    fn build(
        secrets: &[String],
        allow_packed: bool,
        automaton: impl FnOnce() -> AhoCorasick,
    ) -> Self {
        let searcher = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(secrets)
            .build()
            .filter(|_| allow_packed);
        searcher.map_or_else(|| Self::Automaton(automaton()), Self::Packed)
    }

    /// Start of the leftmost occurrence lying wholly in `hay[from..]`.
    fn leftmost_start(&self, hay: &[u8], from: usize) -> Option<usize> {
        let found = match self {
            Self::Packed(p) => p.find_in(hay, AcSpan::from(from..hay.len())),
            Self::Automaton(a) => a.find(Input::new(hay).range(from..)),
        };
        found.map(|m| m.start())
    }

    /// Whether any secret occurs in `hay`.
    fn is_match(&self, hay: &[u8]) -> bool {
        self.leftmost_start(hay, 0).is_some()
    }
}

/// Adds `span` to sorted, merged `spans`, merging it with every span it
/// overlaps or touches.
///
/// Requires every span already there to start at or before `span`'s end, so
/// the ones to merge are exactly the trailing ones reaching `span`'s start.
/// That holds because a window reports matches in order of their end, and a
/// later window only reports matches starting after all earlier ones.
fn push_merged(spans: &mut Vec<Span>, (mut start, mut end): Span) {
    while let Some(&(s, e)) = spans.last() {
        if e < start {
            break;
        }
        debug_assert!(s <= end, "spans must arrive in the documented order");
        start = start.min(s);
        end = end.max(e);
        spans.pop();
    }
    spans.push((start, end));
}

/// Copies `bytes` to `out`, each span replaced by one marker.
fn splice(bytes: &[u8], spans: &[Span], out: &mut Vec<u8>) {
    let mut cursor = 0;
    for &(start, end) in spans {
        out.extend_from_slice(&bytes[cursor..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        cursor = end;
    }
    out.extend_from_slice(&bytes[cursor..]);
}

/// A fixed set of secrets to scrub from everything the runtime sends out
/// (messages, command output, error text). Cheap to clone: the compiled
/// automata are shared.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    matcher: Option<Arc<Matcher>>,
}

impl Redactor {
    /// Builds a redactor from secrets; empty ones are ignored (they would
    /// match everywhere) and duplicates are dropped.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort();
        secrets.dedup();
        Self {
            matcher: Matcher::build(secrets, WINDOW, true),
        }
    }

    /// The same secrets with another overlapping-search window (to exercise
    /// window edges on short texts) and maybe without the packed locator.
    #[cfg(test)]
    fn tuned(&self, window: usize, allow_packed: bool) -> Self {
        Self {
            matcher: Matcher::build(self.secrets().to_vec(), window, allow_packed),
        }
    }

    /// This redactor plus more secrets (the union), e.g. the session's
    /// secrets plus one command's `env` values.
    pub fn with<I, S>(&self, more: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let more: Vec<String> = more.into_iter().map(|s| s.as_ref().to_owned()).collect();
        Self::new(self.secrets().iter().chain(&more))
    }

    /// Whether there is nothing to redact, so callers can skip work.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The secrets (sorted, deduplicated), for building derived redactors.
    pub fn secrets(&self) -> &[String] {
        self.matcher.as_deref().map_or(&[], |m| &m.secrets)
    }

    /// Redacts one string; borrows it unchanged when nothing matches.
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_cow(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Occurrences of UTF-8 secrets in UTF-8 text start and end on char
            // boundaries, so splicing markers in keeps the text valid.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// Redacts raw bytes (command output need not be UTF-8); the reference
    /// that [`StreamRedactor`] must match exactly.
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.redact_cow(bytes).into_owned()
    }

    /// Redacts every string value and object key in a JSON value, in place,
    /// at any depth: secrets can hide in tool arguments and results.
    ///
    /// If two keys redact to the same text, the later one wins.
    pub fn redact_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact_str(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => {
                map.values_mut().for_each(|v| self.redact_json(v));
                if map.keys().any(|k| self.matches(k.as_bytes())) {
                    *map = std::mem::take(map)
                        .into_iter()
                        .map(|(k, v)| (self.redact_str(&k).into_owned(), v))
                        .collect();
                }
            }
            _ => {}
        }
    }

    /// A streaming redactor over the same secrets, for output read in pieces.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            state: StreamState::default(),
        }
    }

    /// Whether any secret occurs in `bytes`.
    fn matches(&self, bytes: &[u8]) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.locator.is_match(bytes))
    }

    /// Redacts `bytes`, borrowing them when nothing matches.
    fn redact_cow<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(bytes);
        };
        let mut spans = Vec::new();
        matcher.spans(bytes, None, &mut spans);
        if spans.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        splice(bytes, &spans, &mut out);
        Cow::Owned(out)
    }
}

/// Values of a command's `env` that are long enough to be treated as
/// secrets, so they are redacted from that command's output.
pub fn env_secrets<'a, I>(values: I) -> impl Iterator<Item = &'a str>
where
    I: IntoIterator<Item = &'a String>,
{
    values
        .into_iter()
        .map(String::as_str)
        .filter(|v| v.chars().count() >= MIN_ENV_SECRET_LEN)
}

/// Redacts a byte stream that arrives in arbitrary pieces, with exactly the
/// output [`Redactor::redact_bytes`] gives on the whole stream, even when a
/// secret is split across reads.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Redactor,
    state: StreamState,
}

/// What a stream holds between pushes.
#[derive(Debug, Default)]
struct StreamState {
    /// Raw bytes not yet emitted: at most `max_secret_len - 1`.
    carry: Vec<u8>,
    /// `Some(n)`: the already emitted marker's range runs up to `carry[n]`
    /// (`n == 0`: it ends right where `carry` starts, so an occurrence
    /// starting there touches it and must not get a marker of its own).
    covered: Option<usize>,
    /// Scratch: `carry` + the new chunk.
    buf: Vec<u8>,
    /// Scratch: merged spans of `buf`.
    spans: Vec<Span>,
}

impl StreamRedactor {
    /// Feeds a chunk; appends the bytes that are now safe to emit to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(matcher) = &self.redactor.matcher else {
            out.extend_from_slice(chunk);
            return;
        };
        let state = &mut self.state;
        state.buf.clear();
        state.buf.extend_from_slice(&state.carry);
        state.buf.extend_from_slice(chunk);
        state.drain(matcher, matcher.max_len - 1, out);
    }

    /// Flushes whatever is held back at end of stream. The stream is then
    /// empty again and may be reused for a new one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(matcher) = &self.redactor.matcher {
            let state = &mut self.state;
            std::mem::swap(&mut state.buf, &mut state.carry);
            state.drain(matcher, 0, out);
        }
        self.state.carry.clear();
        self.state.covered = None;
    }

    /// How many raw bytes are held back, to check that it stays bounded.
    #[cfg(test)]
    fn carry_len(&self) -> usize {
        self.state.carry.len()
    }
}

impl StreamState {
    /// Emits `buf` except its last `hold` bytes, which become the new carry.
    ///
    /// No occurrence that is not wholly in `buf` can start before the cut
    /// `buf.len() - hold` when `hold = max_secret_len - 1`, so everything
    /// before the cut is final.
    fn drain(&mut self, matcher: &Matcher, hold: usize, out: &mut Vec<u8>) {
        let cut = self.buf.len().saturating_sub(hold);
        if cut == 0 {
            // Nothing is final yet; `covered` still describes the same start.
            std::mem::swap(&mut self.carry, &mut self.buf);
            return;
        }
        matcher.spans(&self.buf, self.covered, &mut self.spans);
        self.covered = emit(&self.buf, &self.spans, self.covered.is_some(), cut, out);
        self.carry.clear();
        self.carry.extend_from_slice(&self.buf[cut..]);
    }
}

/// Emits `buf[..cut]` with markers for `spans`, and returns how far past the
/// cut the last emitted marker's range reaches, if it reaches the cut.
/// `continues`: a span starting at 0 continues an already emitted marker.
fn emit(
    buf: &[u8],
    spans: &[Span],
    continues: bool,
    cut: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let mut cursor = 0;
    for &(start, end) in spans.iter().take_while(|&&(start, _)| start < cut) {
        out.extend_from_slice(&buf[cursor..start]);
        if !(continues && start == 0) {
            out.extend_from_slice(REDACTED.as_bytes());
        }
        if end >= cut {
            return Some(end - cut);
        }
        cursor = end;
    }
    out.extend_from_slice(&buf[cursor..cut]);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(secrets.iter().copied())
    }

    /// Streams `bytes` cut at `splits` (sorted offsets), then finishes.
    fn stream_split(r: &Redactor, bytes: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut stream = r.stream();
        let mut out = Vec::new();
        let mut prev = 0;
        for &at in splits.iter().chain([&bytes.len()]) {
            stream.push(&bytes[prev..at], &mut out);
            prev = at;
        }
        stream.finish(&mut out);
        out
    }

    /// Streams `bytes` one byte at a time.
    fn stream_bytewise(r: &Redactor, bytes: &[u8]) -> Vec<u8> {
        let splits: Vec<usize> = (1..bytes.len()).collect();
        stream_split(r, bytes, &splits)
    }

    /// Asserts that every split in two and in three pieces gives `expected`,
    /// with the default and with the smallest overlapping-search window.
    fn assert_every_split(r: &Redactor, bytes: &[u8], expected: &[u8]) {
        assert_splits(r, bytes, expected);
        assert_splits(&r.tuned(0, true), bytes, expected);
        assert_splits(&r.tuned(0, false), bytes, expected);
    }

    fn assert_splits(r: &Redactor, bytes: &[u8], expected: &[u8]) {
        assert_eq!(r.redact_bytes(bytes), expected);
        for i in 0..=bytes.len() {
            assert_eq!(stream_split(r, bytes, &[i]), expected, "split at {i}");
            for j in i..=bytes.len() {
                assert_eq!(stream_split(r, bytes, &[i, j]), expected, "split {i},{j}");
            }
        }
        assert_eq!(stream_bytewise(r, bytes), expected);
    }

    /// Independent oracle: mask every byte of every occurrence, then replace
    /// each maximal masked run with one marker.
    fn oracle(secrets: &[String], bytes: &[u8]) -> Vec<u8> {
        let mut mask = vec![false; bytes.len()];
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            for i in 0..bytes.len() {
                if bytes[i..].starts_with(s.as_bytes()) {
                    mask[i..i + s.len()].iter_mut().for_each(|m| *m = true);
                }
            }
        }
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            match (mask[i], i > 0 && mask[i - 1]) {
                (false, _) => out.push(b),
                (true, false) => out.extend_from_slice(REDACTED.as_bytes()),
                (true, true) => {}
            }
        }
        out
    }

    #[test]
    fn no_secrets_is_a_borrowing_pass_through() {
        let r = Redactor::default();
        assert!(r.is_empty());
        assert!(r.secrets().is_empty());
        assert!(matches!(
            r.redact_str("anything"),
            Cow::Borrowed("anything")
        ));
        assert_eq!(r.redact_bytes(b"\xffx"), b"\xffx");
        let mut v = json!({"k": "v"});
        r.redact_json(&mut v);
        assert_eq!(v, json!({"k": "v"}));
        assert_every_split(&r, b"plain text", b"plain text");
    }

    #[test]
    fn no_match_borrows() {
        let r = redactor(&["hunter2"]);
        assert!(matches!(r.redact_str("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn empty_secrets_are_ignored_and_duplicates_dropped() {
        assert!(redactor(&[""]).is_empty());
        let r = redactor(&["", "tok", "tok"]);
        assert_eq!(r.secrets(), ["tok"]);
        assert_eq!(r.redact_str("a tok b"), "a [REDACTED] b");
        assert_eq!(r.redact_str(""), "");
    }

    #[test]
    fn with_is_the_union() {
        let r = redactor(&["one"]).with(["two", "one", ""]);
        assert_eq!(r.secrets(), ["one", "two"]);
        assert_eq!(r.redact_str("one two three"), "[REDACTED] [REDACTED] three");
        assert_eq!(Redactor::default().with(["x"]).secrets(), ["x"]);
    }

    #[test]
    fn clones_share_the_automaton() {
        let r = redactor(&["secret"]);
        let c = r.clone();
        let (a, b) = (r.matcher.unwrap(), c.matcher.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn secret_at_start_end_and_whole() {
        let r = redactor(&["sec"]);
        assert_every_split(&r, b"sec tail", b"[REDACTED] tail");
        assert_every_split(&r, b"head sec", b"head [REDACTED]");
        assert_every_split(&r, b"sec", b"[REDACTED]");
    }

    #[test]
    fn repeated_and_adjacent_occurrences() {
        let r = redactor(&["tok"]);
        assert_every_split(&r, b"tok tok,tok", b"[REDACTED] [REDACTED],[REDACTED]");
        assert_every_split(&r, b"toktok", b"[REDACTED]");
        assert_every_split(&r, b"xtoktoktoky", b"x[REDACTED]y");
        assert_eq!(
            redactor(&["secret"]).redact_str("secretsecret"),
            "[REDACTED]"
        );
    }

    #[test]
    fn overlapping_secrets_merge() {
        let r = redactor(&["abc", "bcd"]);
        assert_every_split(&r, b"xabcdy", b"x[REDACTED]y");
        assert_every_split(&r, b"abcd-bcd-abc", b"[REDACTED]-[REDACTED]-[REDACTED]");
        let r = redactor(&["aba"]);
        assert_every_split(&r, b"ababa_aba", b"[REDACTED]_[REDACTED]");
    }

    #[test]
    fn touching_secrets_merge() {
        let r = redactor(&["ab", "cd"]);
        assert_every_split(&r, b"xabcdy", b"x[REDACTED]y");
        assert_every_split(&r, b"ab.cd", b"[REDACTED].[REDACTED]");
    }

    #[test]
    fn secret_inside_another() {
        let r = redactor(&["pass", "password", "word"]);
        assert_every_split(
            &r,
            b"my password is pass, sword",
            b"my [REDACTED] is [REDACTED], s[REDACTED]",
        );
        let r = redactor(&["cret", "long-secret"]);
        assert_every_split(&r, b"a long-secret! cret", b"a [REDACTED]! [REDACTED]");
    }

    #[test]
    fn secret_split_across_many_chunks() {
        let r = redactor(&["supersecret-token"]);
        let text = b"pre supersecret-token post";
        let expected = b"pre [REDACTED] post";
        assert_eq!(stream_split(&r, text, &[5, 8, 12, 15, 20]), expected);
        assert_eq!(stream_bytewise(&r, text), expected);
        assert_every_split(&r, text, expected);
    }

    #[test]
    fn empty_chunks_are_harmless() {
        let r = redactor(&["secret"]);
        assert_eq!(
            stream_split(&r, b"a secret", &[0, 0, 3, 3, 8, 8]),
            b"a [REDACTED]"
        );
        let mut stream = r.stream();
        let mut out = Vec::new();
        stream.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn single_byte_secrets() {
        let r = redactor(&["x"]);
        assert_every_split(&r, b"axxbxc", b"a[REDACTED]b[REDACTED]c");
    }

    #[test]
    fn multibyte_utf8_split_mid_character() {
        let secret = "pässwörd-ключ-🔑";
        let r = redactor(&[secret, "ключ"]);
        let text = format!("é {secret} ü ключ🔑ключ");
        let expected = "é [REDACTED] ü [REDACTED]🔑[REDACTED]";
        assert_eq!(r.redact_str(&text), expected);
        assert_every_split(&r, text.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn non_utf8_bytes_around_a_secret() {
        let r = redactor(&["s3cr3t"]);
        let text = b"\xff\xfes3cr3t\xc3\x80\xc3s3cr3t\x00";
        assert_every_split(&r, text, b"\xff\xfe[REDACTED]\xc3\x80\xc3[REDACTED]\x00");
    }

    #[test]
    fn redact_json_strings_and_keys_at_every_depth() {
        let r = redactor(&["hunter22"]);
        let mut v = json!({
            "cmd": "login --password hunter22",
            "hunter22": {"nested": ["a", "xhunter22x", {"hunter22_key": 1}]},
            "n": 7, "b": true, "z": null,
        });
        r.redact_json(&mut v);
        let expected = json!({
            "cmd": "login --password [REDACTED]",
            "[REDACTED]": {"nested": ["a", "x[REDACTED]x", {"[REDACTED]_key": 1}]},
            "n": 7, "b": true, "z": null,
        });
        assert_eq!(v, expected);
        let mut s = json!("hunter22");
        r.redact_json(&mut s);
        assert_eq!(s, json!("[REDACTED]"));
    }

    #[test]
    fn env_secrets_threshold_counts_chars() {
        let values: Vec<String> = ["1", "true", "1234567", "12345678", "ключклю", "ключключ"]
            .map(String::from)
            .into();
        let found: Vec<&str> = env_secrets(&values).collect();
        assert_eq!(found, ["12345678", "ключключ"]);
        assert_eq!(MIN_ENV_SECRET_LEN, 8);
    }

    #[test]
    fn carry_stays_bounded_on_endless_match() {
        let r = redactor(&["aa"]);
        let mut stream = r.stream();
        let mut out = Vec::new();
        let chunk = vec![b'a'; 4096];
        for _ in 0..256 {
            stream.push(&chunk, &mut out);
            assert!(stream.carry_len() <= 1);
        }
        for _ in 0..1000 {
            stream.push(b"a", &mut out);
            assert!(stream.carry_len() <= 1);
        }
        stream.finish(&mut out);
        assert_eq!(out, REDACTED.as_bytes());
    }

    #[test]
    fn carry_is_at_most_longest_secret_minus_one() {
        let r = redactor(&["abcdefgh", "xy"]);
        let mut stream = r.stream();
        let mut out = Vec::new();
        for chunk in [
            &b"0123456789abcdefg"[..],
            b"h",
            b"abc",
            b"",
            b"zzzzzzzzzzzz",
        ] {
            stream.push(chunk, &mut out);
            assert!(stream.carry_len() <= 7);
        }
        stream.finish(&mut out);
        assert_eq!(out, b"0123456789[REDACTED]abczzzzzzzzzzzz");
    }

    #[test]
    fn dense_matches_across_many_windows() {
        let secrets: Vec<String> = ["aa", "ab", "bab"].map(String::from).into();
        let text: Vec<u8> = b"aab.ba.b".iter().copied().cycle().take(5000).collect();
        let expected = oracle(&secrets, &text);
        let r = Redactor::new(&secrets);
        for r in [
            r.clone(),
            r.tuned(0, true),
            r.tuned(0, false),
            r.tuned(64, false),
        ] {
            assert_eq!(r.redact_bytes(&text), expected);
            assert_eq!(
                stream_split(&r, &text, &[1, 511, 512, 513, 1024, 4000]),
                expected
            );
            assert_eq!(stream_bytewise(&r, &text), expected);
        }
    }

    #[test]
    fn many_secrets_fall_back_to_the_automaton_locator() {
        let secrets: Vec<String> = (0..300).map(|i| format!("key-{i:03}-x")).collect();
        let r = Redactor::new(&secrets);
        assert!(matches!(
            r.matcher.as_ref().unwrap().locator,
            Locator::Automaton(_)
        ));
        let text = b"a key-007-x b key-299-xkey-100-x c key-300-x";
        let expected = b"a [REDACTED] b [REDACTED] c key-300-x";
        assert_every_split(&r, text, expected);
    }

    #[test]
    fn finish_resets_for_reuse() {
        let r = redactor(&["aa"]);
        let mut stream = r.stream();
        let mut out = Vec::new();
        stream.push(b"xaa", &mut out);
        stream.finish(&mut out);
        stream.push(b"aay", &mut out);
        stream.finish(&mut out);
        assert_eq!(out, b"x[REDACTED][REDACTED]y");
    }

    #[test]
    fn static_matches_oracle_on_tricky_cases() {
        let secrets: Vec<String> = ["aab", "ab", "b", "aaa"].map(String::from).into();
        let r = Redactor::new(&secrets);
        for text in ["aaab", "abab", "aaaaab", "baaac", "cabbac"] {
            assert_eq!(
                r.redact_bytes(text.as_bytes()),
                oracle(&secrets, text.as_bytes())
            );
            assert_every_split(&r, text.as_bytes(), &oracle(&secrets, text.as_bytes()));
        }
    }

    /// Timing check, run by hand: `cargo test --release --lib redact -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let keys = [
            "sk-live-0123456789abcdef",
            "hunter22",
            "ghp_ABCDEFGHIJKLMNOP",
        ];
        let log =
            b"2024-01-01T00:00:00Z INFO request handled in 12ms path=/api/v1/items status=200\n";
        let leaky = b"2024-01-01 INFO token=hunter22 key=sk-live-0123456789abcdef ok\n";
        time("no secrets", &Redactor::default(), log);
        time("log, no match", &redactor(&keys), log);
        time("log, 2 matches per line", &redactor(&keys), leaky);
        time("dense 'aa' over 'a'", &redactor(&["aa"]), b"a");
    }

    /// Prints stream and static throughput over 64 KiB chunks of `line`s.
    fn time(name: &str, r: &Redactor, line: &[u8]) {
        let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
        let (mut out, mut stream) = (Vec::new(), r.stream());
        let streamed = best_mb_per_s(chunk.len(), || {
            out.clear();
            stream.push(&chunk, &mut out);
        });
        let whole = best_mb_per_s(chunk.len(), || {
            std::hint::black_box(r.redact_bytes(&chunk));
        });
        println!("{name:28} stream {streamed:6.0} MB/s  static {whole:6.0} MB/s");
    }

    /// Best of 20 rounds of 64 calls, so a busy machine skews it less.
    fn best_mb_per_s(bytes: usize, mut f: impl FnMut()) -> f64 {
        let best = (0..20)
            .map(|_| {
                let start = std::time::Instant::now();
                (0..64).for_each(|_| f());
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        (bytes * 64) as f64 / 1e6 / best
    }

    /// Small alphabets make overlaps frequent. None of these bytes occurs in
    /// [`REDACTED`], so no secret can straddle a marker in the output.
    const SECRET_PIECES: &[&str] = &["a", "b", "é", "🔑"];
    const TEXT_PIECES: &[&[u8]] = &[
        b"a",
        b"b",
        b"c",
        "é".as_bytes(),
        "🔑".as_bytes(),
        b"\xff",
        b"\xc3",
    ];

    fn secrets_strategy() -> impl Strategy<Value = Vec<String>> {
        let secret = prop::collection::vec(prop::sample::select(SECRET_PIECES), 0..6)
            .prop_map(|pieces| pieces.concat());
        prop::collection::vec(secret, 0..5)
    }

    fn text_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(TEXT_PIECES), 0..80)
            .prop_map(|pieces| pieces.concat())
    }

    fn splits_strategy() -> impl Strategy<Value = Vec<prop::sample::Index>> {
        prop::collection::vec(any::<prop::sample::Index>(), 0..10)
    }

    fn offsets(splits: &[prop::sample::Index], len: usize) -> Vec<usize> {
        let mut at: Vec<usize> = splits.iter().map(|i| i.index(len + 1)).collect();
        at.sort_unstable();
        at
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn streaming_equals_static(
            secrets in secrets_strategy(),
            text in text_strategy(),
            splits in splits_strategy(),
            window in 0..24usize,
            packed: bool,
        ) {
            let r = Redactor::new(&secrets).tuned(window, packed);
            let whole = r.redact_bytes(&text);
            prop_assert_eq!(stream_split(&r, &text, &offsets(&splits, text.len())), whole.clone());
            prop_assert_eq!(stream_bytewise(&r, &text), whole);
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn static_equals_oracle(
            secrets in secrets_strategy(),
            text in text_strategy(),
            window in 0..24usize,
            packed: bool,
        ) {
            let expected = oracle(&secrets, &text);
            let r = Redactor::new(&secrets);
            prop_assert_eq!(r.redact_bytes(&text), expected.clone());
            prop_assert_eq!(r.tuned(window, packed).redact_bytes(&text), expected);
        }

        #[test]
        fn no_secret_survives_streaming(
            secrets in secrets_strategy(),
            text in text_strategy(),
            splits in splits_strategy(),
            window in 0..24usize,
            packed: bool,
        ) {
            let r = Redactor::new(&secrets).tuned(window, packed);
            let out = stream_split(&r, &text, &offsets(&splits, text.len()));
            for s in secrets.iter().filter(|s| !s.is_empty()) {
                prop_assert!(!out.windows(s.len()).any(|w| w == s.as_bytes()), "{s:?} leaked");
            }
        }

        #[test]
        fn redact_str_agrees_with_bytes(
            secrets in secrets_strategy(),
            pieces in prop::collection::vec(prop::sample::select(SECRET_PIECES), 0..60),
        ) {
            let r = Redactor::new(&secrets);
            let text = pieces.concat();
            let redacted = r.redact_str(&text);
            let bytes = r.redact_bytes(text.as_bytes());
            prop_assert_eq!(redacted.as_bytes(), bytes.as_slice());
            prop_assert_eq!(matches!(redacted, Cow::Borrowed(_)), redacted == text.as_str());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn long_texts_cross_default_windows(
            secrets in secrets_strategy(),
            text in prop::collection::vec(prop::sample::select(TEXT_PIECES), 0..1500)
                .prop_map(|pieces| pieces.concat()),
            splits in splits_strategy(),
        ) {
            let r = Redactor::new(&secrets);
            let whole = r.redact_bytes(&text);
            prop_assert_eq!(&whole, &oracle(&secrets, &text));
            prop_assert_eq!(stream_split(&r, &text, &offsets(&splits, text.len())), whole);
        }
    }
}
