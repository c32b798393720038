//! The terminal copy of a command's stdout: its head and tail in bounded
//! memory, whatever the command prints.

use std::collections::VecDeque;

use crate::text::{floor_boundary, join_with_marker};

/// The terminal copy of stdout: the first `head_limit` and last `tail_limit`
/// bytes, in bounded memory, joined by a marker when the middle was dropped.
#[derive(Debug)]
pub(super) struct Capture {
    head: String,
    head_limit: usize,
    /// Set once a char did not fit: later text must not sneak into the head.
    head_full: bool,
    tail: VecDeque<u8>,
    tail_limit: usize,
    omitted: usize,
}

impl Capture {
    pub(super) fn new(head_limit: usize, tail_limit: usize) -> Self {
        Self {
            head: String::new(),
            head_limit,
            head_full: false,
            tail: VecDeque::new(),
            tail_limit,
            omitted: 0,
        }
    }

    pub(super) fn push(&mut self, text: &str) {
        let rest = self.fill_head(text);
        self.push_tail(rest.as_bytes());
    }

    /// Adds what fits to the head; returns the rest.
    fn fill_head<'t>(&mut self, text: &'t str) -> &'t str {
        if self.head_full {
            return text;
        }
        let room = self.head_limit - self.head.len();
        let cut = floor_boundary(text, room);
        self.head.push_str(&text[..cut]);
        if cut < text.len() {
            self.head_full = true;
        }
        &text[cut..]
    }

    fn push_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.tail_limit {
            self.omitted += self.tail.len() + bytes.len() - self.tail_limit;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_limit..]);
            return;
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(self.tail_limit);
        self.tail.drain(..excess);
        self.omitted += excess;
    }

    pub(super) fn finish(mut self) -> String {
        let tail = Vec::from(std::mem::take(&mut self.tail));
        // A trimmed tail may start mid-character: drop the orphaned bytes.
        let skip = if self.omitted > 0 {
            tail.iter().take_while(|&&b| is_continuation(b)).count()
        } else {
            0
        };
        let tail = String::from_utf8_lossy(&tail[skip..]);
        if self.omitted + skip == 0 {
            self.head + &tail
        } else {
            join_with_marker(&self.head, self.omitted + skip, &tail)
        }
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}
