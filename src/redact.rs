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
//! back at most `max_secret_len - 1` bytes (a few more when the chunk ends
//! inside what may become a marker), so a secret split across reads is still
//! caught.
//!
//! **The marker is never redacted.** An occurrence of a secret that overlaps a
//! `[REDACTED]` already in the text without containing it whole (the secret
//! `E`, or `D]x` in `[REDACTED]x`) is left alone. That makes redaction
//! idempotent: text redacted once comes out of any later pass with the same
//! (or fewer) secrets unchanged, so a producer's pass and the session writer's
//! safety pass never mangle each other's markers, and a result fitted to the
//! frame limit after the first pass cannot grow in the second.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use aho_corasick::{AhoCorasick, Input, MatchKind, Span as AcSpan, packed};
use serde_json::Value;

/// What every secret is replaced with, so readers can see that something was
/// removed (and that it was not simply empty).
pub const REDACTED: &str = "[REDACTED]";

/// Minimum length (in chars) of a command `env` value for it to be treated as
/// a secret: short values like `1` or `true` are flags, and redacting them
/// would shred ordinary output.
pub(crate) const MIN_ENV_SECRET_LEN: usize = 8;

/// A half-open byte range `[start, end)` of the haystack to redact.
type Span = (usize, usize);

/// Finds whole markers in a text (they cannot overlap one another: `[`
/// occurs only at the marker's start).
static MARKER_FINDER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::new([REDACTED]).expect("one short pattern is within aho-corasick's limits")
});

/// Byte ranges of the whole markers in `hay`, in order.
fn markers_in(hay: &[u8], markers: &mut Vec<Span>) {
    markers.clear();
    markers.extend(MARKER_FINDER.find_iter(hay).map(|m| (m.start(), m.end())));
}

/// Whether the occurrence `span` overlaps one of `markers` (sorted) without
/// containing it whole: such an occurrence is the marker (or its edge) read
/// as a secret, and is left alone so that markers survive any later pass.
fn clips_a_marker(markers: &[Span], (start, end): Span) -> bool {
    let first = markers.partition_point(|&(_, m_end)| m_end <= start);
    markers[first..]
        .iter()
        .take_while(|&&(m_start, _)| m_start < end)
        .any(|&(m_start, m_end)| m_start < start || m_end > end)
}

/// Where a stream chunk may be cut: `hold` bytes before the end, or before
/// a trailing partial marker (which the next chunk may complete), and never
/// inside a whole marker. Everything before the cut is then final.
fn stream_cut(buf: &[u8], hold: usize) -> usize {
    let marker = REDACTED.as_bytes();
    let end = (1..marker.len())
        .rev()
        .find(|&k| buf.ends_with(&marker[..k]))
        .map_or(buf.len(), |k| buf.len() - k);
    let cut = end.saturating_sub(hold);
    marker_around(buf, cut).map_or(cut, |(start, _)| start)
}

/// The whole marker of already redacted `hay` that position `at` falls
/// strictly inside, as `(start, end)`: a cut there would split it.
pub(crate) fn marker_around(hay: &[u8], at: usize) -> Option<(usize, usize)> {
    let len = REDACTED.len();
    let near = at.saturating_sub(len - 1)..hay.len().min(at + len - 1);
    MARKER_FINDER
        .find_iter(&hay[near.clone()])
        .map(|m| (near.start + m.start(), near.start + m.end()))
        .find(|&(start, end)| start < at && at < end)
}

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
    /// `hay`, sorted and pairwise neither overlapping nor touching, leaving
    /// out occurrences that clip one of `markers` (the whole markers of
    /// `hay`). `seed`, if any, is a prefix `[0, seed)` that already belongs to
    /// a redacted range.
    ///
    /// Returns how far the occurrences starting before `cut` (and the seed)
    /// reach: those are final, whatever follows `hay`.
    fn spans(
        &self,
        hay: &[u8],
        seed: Option<usize>,
        cut: usize,
        markers: &[Span],
        spans: &mut Vec<Span>,
    ) -> usize {
        spans.clear();
        spans.extend(seed.map(|end| (0, end)));
        let mut reach = seed.unwrap_or(0);
        let mut pos = 0;
        while let Some(start) = self.locator.leftmost_start(hay, pos) {
            pos = self.scan_window(hay, start, markers, spans, |(s, e)| {
                if s < cut {
                    reach = reach.max(e);
                }
            });
        }
        reach
    }

    /// Adds to `spans` every occurrence starting in `[from, next)` and returns
    /// `next` (> `from`). Such occurrences all lie in the scanned window.
    fn scan_window(
        &self,
        hay: &[u8],
        from: usize,
        markers: &[Span],
        spans: &mut Vec<Span>,
        mut seen: impl FnMut(Span),
    ) -> usize {
        let end = hay.len().min(from + self.window);
        let next = if end == hay.len() {
            end
        } else {
            end + 1 - self.max_len
        };
        let window = Input::new(hay).range(from..end);
        for m in self.overlapping.find_overlapping_iter(window) {
            let span = (m.start(), m.end());
            if m.start() < next && !clips_a_marker(markers, span) {
                push_merged(spans, span);
                seen(span);
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
        let mut markers = Vec::new();
        markers_in(bytes, &mut markers);
        let mut spans = Vec::new();
        matcher.spans(bytes, None, bytes.len(), &markers, &mut spans);
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
pub(crate) fn env_secrets<'a, I>(values: I) -> impl Iterator<Item = &'a str>
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
    /// Raw bytes not yet emitted: at most `max_secret_len - 1`, plus up to
    /// twice the marker's length when a chunk ends near a marker.
    carry: Vec<u8>,
    /// `Some(n)`: the already emitted marker's range runs up to `carry[n]`
    /// (`n == 0`: it ends right where `carry` starts, so an occurrence
    /// starting there touches it and must not get a marker of its own).
    covered: Option<usize>,
    /// Scratch: `carry` + the new chunk.
    buf: Vec<u8>,
    /// Scratch: merged spans of `buf`.
    spans: Vec<Span>,
    /// Scratch: whole markers in `buf`.
    markers: Vec<Span>,
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
        let cut = stream_cut(&state.buf, matcher.max_len - 1);
        state.drain(matcher, cut, out);
    }

    /// Flushes whatever is held back at end of stream. The stream is then
    /// empty again and may be reused for a new one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(matcher) = &self.redactor.matcher {
            let state = &mut self.state;
            std::mem::swap(&mut state.buf, &mut state.carry);
            let cut = state.buf.len();
            state.drain(matcher, cut, out);
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
    /// Emits `buf[..cut]`; the rest becomes the new carry.
    ///
    /// `cut` comes from [`stream_cut`] (or is the end of the stream): no
    /// occurrence that is not wholly in `buf` can start before it, and every
    /// marker that an occurrence starting before it could clip is wholly in
    /// `buf`, so everything before the cut is final.
    fn drain(&mut self, matcher: &Matcher, cut: usize, out: &mut Vec<u8>) {
        if cut == 0 {
            // Nothing is final yet; `covered` still describes the same start.
            std::mem::swap(&mut self.carry, &mut self.buf);
            return;
        }
        markers_in(&self.buf, &mut self.markers);
        let reach = matcher.spans(&self.buf, self.covered, cut, &self.markers, &mut self.spans);
        let open = emit(&self.buf, &self.spans, self.covered.is_some(), cut, out);
        // Only what the final occurrences cover carries over: an occurrence
        // starting after the cut is found again (or not, if a marker turns
        // out to clip it) in the next chunk.
        self.covered = open.then(|| reach.saturating_sub(cut));
        self.carry.clear();
        self.carry.extend_from_slice(&self.buf[cut..]);
    }
}

/// Emits `buf[..cut]` with markers for `spans`, and returns whether the
/// last emitted marker's range reaches the cut (so it may continue).
/// `continues`: a span starting at 0 continues an already emitted marker.
fn emit(buf: &[u8], spans: &[Span], continues: bool, cut: usize, out: &mut Vec<u8>) -> bool {
    let mut cursor = 0;
    for &(start, end) in spans.iter().take_while(|&&(start, _)| start < cut) {
        out.extend_from_slice(&buf[cursor..start]);
        if !(continues && start == 0) {
            out.extend_from_slice(REDACTED.as_bytes());
        }
        if end >= cut {
            return true;
        }
        cursor = end;
    }
    out.extend_from_slice(&buf[cursor..cut]);
    false
}

#[cfg(test)]
mod tests;
