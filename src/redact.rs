//! Secret redaction: whole values and streams.
//!
//! STUB: replaced by the full implementation (aho-corasick, streaming carry).

use std::borrow::Cow;

use serde_json::Value;

/// What every secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Minimum length of a command `env` value for it to be treated as a secret.
pub const MIN_ENV_SECRET_LEN: usize = 8;

/// A fixed set of secrets to scrub from text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Builds a redactor; empty secrets are ignored.
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
        Self { secrets }
    }

    /// This redactor plus more secrets.
    pub fn with<I, S>(&self, more: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::new(
            self.secrets
                .iter()
                .map(String::as_str)
                .map(str::to_owned)
                .chain(more.into_iter().map(|s| s.as_ref().to_owned())),
        )
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The secrets, for building derived redactors.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Redacts one string.
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }

    /// Redacts every string (and key) in a JSON value, in place.
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
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.redact_json(&mut v);
                    map.insert(self.redact_str(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }

    /// A streaming redactor over the same secrets.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            carry: Vec::new(),
        }
    }
}

/// Values of a command's `env` that are long enough to be treated as secrets.
pub fn env_secrets<'a, I>(values: I) -> impl Iterator<Item = &'a str>
where
    I: IntoIterator<Item = &'a String>,
{
    values
        .into_iter()
        .map(String::as_str)
        .filter(|v| v.chars().count() >= MIN_ENV_SECRET_LEN)
}

/// Redacts a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Redactor,
    carry: Vec<u8>,
}

impl StreamRedactor {
    /// Feeds a chunk; appends the bytes that are now safe to emit to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.carry.extend_from_slice(chunk);
        let hold = self
            .redactor
            .secrets
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            - 1;
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        let _ = hold;
        out.extend_from_slice(self.redactor.redact_str(&text).as_bytes());
        self.carry.clear();
    }

    /// Flushes whatever is held back at end of stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.carry);
        out.extend_from_slice(rest.as_slice());
    }
}
