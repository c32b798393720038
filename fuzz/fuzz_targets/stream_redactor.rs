//! `StreamRedactor` against `Redactor::redact_bytes` on the whole text.
//!
//! From the input: a few secrets over a small alphabet, how to cut the text
//! into chunks, and the text. Asserts that
//! - the concatenated `push` outputs plus `finish` equal
//!   `Redactor::redact_bytes(whole)`, for the fuzzed chunks and, on the same
//!   stream reused after `finish`, for one-byte chunks;
//! - `redact_bytes` equals an independent naive reference (and
//!   `redact_str` agrees with it on UTF-8 text);
//! - no secret occurs in the output, except where it overlaps a
//!   `[REDACTED]` marker (see `common::unexplained_secret` for why);
//! - the marker is never redacted: a second pass with the same secrets
//!   changes nothing (unless a secret contains the whole marker), and
//!   without `[` in the input every `[` of the output starts a whole marker.

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use runtimeuse::Redactor;

struct Case {
    secrets: Vec<String>,
    /// Chunk lengths; whatever they leave of the text is one last chunk.
    chunks: Vec<usize>,
    text: Vec<u8>,
}

fn case(data: &[u8]) -> Result<Case> {
    let mut u = Unstructured::new(data);
    let secrets = common::secrets(&mut u, 6, 6)?;
    let n = u.int_in_range(0..=16)?;
    let chunks = (0..n)
        .map(|_| {
            // Mostly short chunks, sometimes long ones (windows are 512 bytes).
            let len = u.int_in_range(0..=1100usize)?;
            Ok(if u.arbitrary::<bool>()? {
                len % 16
            } else {
                len
            })
        })
        .collect::<Result<_>>()?;
    let text = common::text_from(u.take_rest());
    Ok(Case {
        secrets,
        chunks,
        text,
    })
}

/// Pushes `text` cut into `chunks` (then the rest), then finishes.
fn stream(stream: &mut runtimeuse::StreamRedactor, text: &[u8], chunks: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = text;
    for &len in chunks {
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        stream.push(chunk, &mut out);
        rest = tail;
    }
    stream.push(rest, &mut out);
    stream.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(Case {
        secrets,
        chunks,
        text,
    }) = case(data)
    else {
        return;
    };
    let redactor = Redactor::new(&secrets);
    let whole = redactor.redact_bytes(&text);

    let mut s = redactor.stream();
    let streamed = stream(&mut s, &text, &chunks);
    assert!(
        streamed == whole,
        "stream != static for secrets {secrets:?}, chunks {chunks:?}, text {:?}:\n  stream {:?}\n  static {:?}",
        common::show(&text),
        common::show(&streamed),
        common::show(&whole),
    );
    let bytewise = vec![1; text.len()];
    let reused = stream(&mut s, &text, &bytewise);
    assert!(
        reused == whole,
        "reused stream, one-byte chunks != static for secrets {secrets:?}, text {:?}:\n  stream {:?}\n  static {:?}",
        common::show(&text),
        common::show(&reused),
        common::show(&whole),
    );

    let expected = common::oracle(&secrets, &text);
    assert!(
        whole == expected,
        "redact_bytes != reference for secrets {secrets:?}, text {:?}:\n  got      {:?}\n  expected {:?}",
        common::show(&text),
        common::show(&whole),
        common::show(&expected),
    );
    if let Ok(text) = std::str::from_utf8(&text) {
        assert_eq!(redactor.redact_str(text).as_bytes(), whole.as_slice());
    }

    if !secrets
        .iter()
        .any(|s| s.contains(runtimeuse::fuzzing::REDACTED))
    {
        assert!(
            redactor.redact_bytes(&whole) == whole,
            "a second pass changed {:?} (secrets {secrets:?})",
            common::show(&whole),
        );
    }
    if !text.contains(&b'[') {
        assert!(
            common::markers_intact(&whole, false),
            "mangled marker in {:?} (secrets {secrets:?})",
            common::show(&whole),
        );
    }

    // A `[` in the text could fake a marker and excuse a real leak.
    if !text.contains(&b'[')
        && let Some((secret, at)) = common::unexplained_secret(&whole, &secrets, false)
    {
        panic!(
            "secret {secret:?} survives at byte {at} of {:?} (text {:?})",
            common::show(&whole),
            common::show(&text),
        );
    }
});
