//! `key=value` arguments: the orchestrator is the only caller, so a flag
//! parser would add build time and nothing else.

use std::collections::HashMap;
use std::str::FromStr;

/// What was passed on the command line.
pub struct Args {
    /// The first argument: which measurement to run.
    pub subcommand: String,
    values: HashMap<String, String>,
    /// Everything after `--`: a program to start (for `startup`).
    pub argv: Vec<String>,
}

impl Args {
    /// Parses `SUBCOMMAND key=value... [-- ARGV...]`.
    pub fn from_env() -> Result<Self, String> {
        let mut raw = std::env::args().skip(1);
        let subcommand = raw.next().ok_or("missing subcommand")?;
        let mut values = HashMap::new();
        let mut argv = Vec::new();
        while let Some(arg) = raw.next() {
            if arg == "--" {
                argv.extend(raw.by_ref());
                break;
            }
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {arg:?}"))?;
            values.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self {
            subcommand,
            values,
            argv,
        })
    }

    /// A required value.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<T, String> {
        let raw = self
            .values
            .get(key)
            .ok_or_else(|| format!("missing {key}="))?;
        raw.parse()
            .map_err(|_| format!("{key}={raw:?} is not a valid value"))
    }

    /// An optional value with a default.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.values.contains_key(key) {
            true => self.get(key),
            false => Ok(default),
        }
    }
}
