//! Helpers shared by the fuzz targets (each target includes this module).
//!
//! Every target's input is decoded with `arbitrary::Unstructured`, drawing
//! secrets and texts from small alphabets so that occurrences, overlaps and
//! near-misses between secrets and text happen often.

#![allow(dead_code)] // Not every target uses every helper.

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use runtimeuse::fuzzing::REDACTED;

/// Pieces secrets are made of. Besides plain letters they include bytes of
/// the `[REDACTED]` marker (`E`, `D`, `]`), so some secrets overlap the
/// marker (see [`unexplained_secret`]), and multi-byte characters, so
/// occurrences and chunk cuts fall inside a character.
pub const SECRET_PIECES: &[&str] = &["a", "b", "E", "D", "]", "é", "🔑", "\"", "\\"];

/// Pieces texts are made of: the secret pieces plus bytes that never occur in
/// a secret, including invalid UTF-8 (a lone `\xff`, a cut `é`) and `[`.
pub const TEXT_PIECES: &[&[u8]] = &[
    b"a",
    b"b",
    b"a",
    b"b",
    b"E",
    b"D",
    b"]",
    b"c",
    b" ",
    b"\n",
    b"\x01",
    "é".as_bytes(),
    "🔑".as_bytes(),
    b"\"",
    b"\\",
    b"\xff",
    b"\xc3",
    b"\x9f",
    b"[",
];

/// Up to `max` secrets of up to `max_pieces` pieces each (empty ones
/// included: the redactor must ignore them).
pub fn secrets(u: &mut Unstructured, max: usize, max_pieces: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=max)?;
    (0..n)
        .map(|_| {
            let pieces = u.int_in_range(0..=max_pieces)?;
            (0..pieces)
                .map(|_| u.choose(SECRET_PIECES).copied())
                .collect::<Result<String>>()
        })
        .collect()
}

/// Maps every remaining input byte to a text piece.
pub fn text_from(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|&b| TEXT_PIECES[b as usize % TEXT_PIECES.len()])
        .copied()
        .collect()
}

/// Returns a secret that occurs in `hay` without touching any redaction
/// marker, with the offset of that occurrence: a leak.
///
/// Occurrences that overlap a marker are excused. The redactor cannot stop
/// its own output from spelling a secret there: a secret `RED` occurs in
/// every marker, and secrets `ab` + `D]c` turn `abc` into `[REDACTED]c`,
/// where `D]c` straddles the marker. Neither puts a single byte of the
/// original secret occurrence in the output. An occurrence overlapping no
/// marker, on the other hand, consists only of bytes copied from the input.
///
/// Every `[REDACTED]` in `hay` counts as a marker, so callers must only ask
/// when `[` cannot come from the input. With `cut_edges`, `hay` is a piece
/// of a longer redacted text that may have been cut inside a marker, so a
/// marker prefix ending `hay` and a marker suffix starting it count too.
pub fn unexplained_secret<'s>(
    hay: &[u8],
    secrets: &'s [String],
    cut_edges: bool,
) -> Option<(&'s str, usize)> {
    let marker = REDACTED.as_bytes();
    let mut covered = vec![false; hay.len()];
    let mut cover = |from: usize, to: usize| covered[from..to].iter_mut().for_each(|c| *c = true);
    for i in find_all(hay, marker) {
        cover(i, i + marker.len());
    }
    if cut_edges {
        if let Some(k) = (1..marker.len())
            .rev()
            .find(|&k| hay.ends_with(&marker[..k]))
        {
            cover(hay.len() - k, hay.len());
        }
        if let Some(k) = (1..marker.len())
            .rev()
            .find(|&k| hay.starts_with(&marker[marker.len() - k..]))
        {
            cover(0, k);
        }
    }
    secrets.iter().filter(|s| !s.is_empty()).find_map(|s| {
        find_all(hay, s.as_bytes())
            .find(|&i| !covered[i..i + s.len()].contains(&true))
            .map(|i| (s.as_str(), i))
    })
}

/// Start offsets of every (overlapping) occurrence of `needle` in `hay`.
pub fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len().max(1))
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Independent reference redaction: mask every byte of every occurrence
/// that does not clip a `[REDACTED]` already in the input (overlap it
/// without containing it whole: the marker is never redacted), then replace
/// each maximal masked run (overlapping or touching occurrences merged) with
/// one marker.
pub fn oracle(secrets: &[String], bytes: &[u8]) -> Vec<u8> {
    let markers: Vec<(usize, usize)> = find_all(bytes, REDACTED.as_bytes())
        .map(|i| (i, i + REDACTED.len()))
        .collect();
    let clips = |start: usize, end: usize| {
        markers
            .iter()
            .any(|&(ms, me)| ms < end && me > start && (ms < start || me > end))
    };
    let mut mask = vec![false; bytes.len()];
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        for i in find_all(bytes, s.as_bytes()).filter(|&i| !clips(i, i + s.len())) {
            mask[i..i + s.len()].iter_mut().for_each(|m| *m = true);
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match (mask[i], i > 0 && mask[i - 1]) {
            (false, _) => out.push(b),
            (true, false) => out.extend_from_slice(REDACTED.as_bytes()),
            (true, true) => {}
        }
    }
    out
}

/// Whether every `[` in `text` starts a whole marker (with `cut_edges`, a
/// marker prefix may also end the text): no marker was mangled. Only
/// meaningful when `[` cannot come from the input.
pub fn markers_intact(text: &[u8], cut_edges: bool) -> bool {
    let marker = REDACTED.as_bytes();
    text.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'[')
        .all(|(i, _)| {
            let rest = &text[i..];
            rest.starts_with(marker) || (cut_edges && marker.starts_with(rest))
        })
}

/// Printable form of bytes for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
