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

/// Independent oracle: mask every byte of every occurrence that does not
/// clip a marker of the input (overlap it without containing it whole), then
/// replace each maximal masked run with one marker.
fn oracle(secrets: &[String], bytes: &[u8]) -> Vec<u8> {
    let marker = REDACTED.as_bytes();
    let markers: Vec<(usize, usize)> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(marker))
        .map(|i| (i, i + marker.len()))
        .collect();
    let clips = |start: usize, end: usize| {
        markers
            .iter()
            .any(|&(ms, me)| ms < end && me > start && (ms < start || me > end))
    };
    let mut mask = vec![false; bytes.len()];
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        for i in 0..bytes.len() {
            if bytes[i..].starts_with(s.as_bytes()) && !clips(i, i + s.len()) {
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
    let log = b"2024-01-01T00:00:00Z INFO request handled in 12ms path=/api/v1/items status=200\n";
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

#[test]
fn the_marker_is_never_redacted() {
    let r = redactor(&["E"]);
    assert_every_split(&r, b"E", b"[REDACTED]");
    assert_every_split(&r, b"echo E", b"echo [REDACTED]");
    assert_every_split(&r, b"[REDACTED] E", b"[REDACTED] [REDACTED]");
    let once = r.redact_str("E and E");
    assert_eq!(r.redact_str(&once), once, "a second pass changes nothing");
}

#[test]
fn a_secret_clipping_a_marker_is_left_but_one_containing_it_is_not() {
    let r = redactor(&["D]x", "y[REDACTED]z"]);
    assert_every_split(&r, b"[REDACTED]x D]x", b"[REDACTED]x [REDACTED]");
    assert_every_split(&r, b"y[REDACTED]z", b"[REDACTED]");
}

#[test]
fn a_chunk_ending_in_a_partial_marker_waits_for_the_rest() {
    let r = redactor(&["D]"]);
    let mut stream = r.stream();
    let mut out = Vec::new();
    stream.push(b"abc[REDAC", &mut out);
    stream.push(b"TED] D]", &mut out);
    stream.finish(&mut out);
    assert_eq!(out, b"abc[REDACTED] [REDACTED]");
}

/// Pieces that spell, cut and touch the marker.
const MARKER_SECRET_PIECES: &[&str] = &["E", "D", "]", "[", "a", "R"];
const MARKER_TEXT_PIECES: &[&[u8]] = &[
    b"[REDACTED]",
    b"[REDACTED]",
    b"[RED",
    b"ACTED]",
    b"E",
    b"D",
    b"]",
    b"[",
    b"a",
    b"b",
];

fn marker_secrets_strategy() -> impl Strategy<Value = Vec<String>> {
    let secret = prop::collection::vec(prop::sample::select(MARKER_SECRET_PIECES), 0..5)
        .prop_map(|pieces| pieces.concat());
    prop::collection::vec(secret, 0..4)
}

fn marker_text_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(MARKER_TEXT_PIECES), 0..120)
        .prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Around markers: the stream agrees with the whole, the whole with the
    /// oracle, and a second pass with the same secrets changes nothing (so
    /// the writer's safety pass never mangles a producer's markers).
    #[test]
    fn markers_survive_and_redaction_is_idempotent(
        secrets in marker_secrets_strategy(),
        text in marker_text_strategy(),
        splits in splits_strategy(),
    ) {
        let r = Redactor::new(&secrets);
        let whole = r.redact_bytes(&text);
        prop_assert_eq!(&whole, &oracle(&secrets, &text));
        prop_assert_eq!(&r.redact_bytes(&whole), &whole);
        // Also with the smallest windows and without the packed locator.
        for r in [r.clone(), r.tuned(0, true), r.tuned(0, false)] {
            prop_assert_eq!(&r.redact_bytes(&text), &whole);
            prop_assert_eq!(&stream_split(&r, &text, &offsets(&splits, text.len())), &whole);
            prop_assert_eq!(&stream_bytewise(&r, &text), &whole);
        }
    }
}
