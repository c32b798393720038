//! Cutting text without breaking a character: every place that shortens or
//! splits what goes to the client (frames, command output, quotes in
//! errors) cuts on UTF-8 boundaries through these.

use std::borrow::Cow;

/// The largest char boundary of `s` that is `<= at`.
pub(crate) fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The smallest char boundary of `s` that is `>= at`.
pub(crate) fn ceil_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Splits `text` into pieces of at most `max` bytes, on char boundaries
/// (a `max` below 4 is taken as 4, so a piece always holds a char).
pub(crate) fn char_pieces(mut text: &str, max: usize) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if text.is_empty() {
            return None;
        }
        let cut = floor_boundary(text, max.max(4));
        let (piece, rest) = text.split_at(cut);
        text = rest;
        Some(piece)
    })
}

/// The first `max` chars of `text`, with `...` when something was cut.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// `head`, the omission marker line, `tail`: what a shortened stdout shows.
pub(crate) fn join_with_marker(head: &str, omitted: usize, tail: &str) -> String {
    format!("{head}\n[runtimeuse: {omitted} bytes of output omitted]\n{tail}")
}

/// `text` cut to at most `max` bytes (on a char boundary) followed by
/// `… (N bytes)`, or unchanged when it fits: how client input (a field, a
/// command) is quoted back in messages without echoing megabytes.
pub(crate) fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let end = floor_boundary(text, max);
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_pieces_respect_chars() {
        let pieces: Vec<&str> = char_pieces("ab€cd", 4).collect();
        assert_eq!(pieces, ["ab", "€c", "d"]);
        assert!(pieces.iter().all(|p| p.len() <= 4));
        let tiny: Vec<&str> = char_pieces("€€", 1).collect();
        assert_eq!(tiny, ["€", "€"], "a max below a char still makes progress");
    }

    #[test]
    fn boundaries_round_inside_a_char() {
        assert_eq!(floor_boundary("a€", 2), 1);
        assert_eq!(ceil_boundary("a€", 2), 4);
        assert_eq!(floor_boundary("ab", 10), 2);
    }

    #[test]
    fn clip_keeps_short_text_and_says_how_long_long_text_was() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ab€cd", 3), "ab… (7 bytes)");
    }

    #[test]
    fn truncation_counts_chars() {
        assert_eq!(truncate_chars("€€€", 2), "€€...");
        assert_eq!(truncate_chars("ab", 2), "ab");
    }
}
