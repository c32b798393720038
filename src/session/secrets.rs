//! The secrets a session has been told about, and the limits on them.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crate::logging::LogSecrets;
use crate::redact::Redactor;

/// Most distinct secrets one session may name, across its requests. Real
/// requests name a handful (API keys, a password, a few tokens); this leaves
/// room for clients that pass every value of a vault, while keeping the
/// matcher (rebuilt when a request names new secrets) and its memory bounded.
pub(crate) const MAX_SESSION_SECRETS: usize = 50_000;

/// Most bytes all of a session's secrets may add up to.
pub(crate) const MAX_SESSION_SECRET_BYTES: usize = 4 * 1024 * 1024;

/// Longest single secret (a PEM private key or a service-account JSON is a
/// few KiB). Command output is held back by the longest secret's length, so
/// this also bounds that.
pub(crate) const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Why a request's `secrets_to_redact` was refused; the text goes to the
/// client, so it names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SecretsError {
    /// One secret is longer than [`MAX_SECRET_BYTES`].
    #[error(
        "Invalid secrets_to_redact: one secret is {len} bytes, more than the limit of {MAX_SECRET_BYTES} bytes per secret"
    )]
    SecretTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The session would hold more than [`MAX_SESSION_SECRETS`].
    #[error(
        "Invalid secrets_to_redact: this session would hold {count} distinct secrets, more than the limit of {MAX_SESSION_SECRETS} per session"
    )]
    CountOverLimit {
        /// How many it would hold.
        count: usize,
    },
    /// The session's secrets would add up to more than
    /// [`MAX_SESSION_SECRET_BYTES`].
    #[error(
        "Invalid secrets_to_redact: this session's secrets would add up to {bytes} bytes, more than the limit of {MAX_SESSION_SECRET_BYTES} bytes per session"
    )]
    BytesOverLimit {
        /// How many bytes they would add up to.
        bytes: usize,
    },
}

/// Every secret the session has been told about, across its requests.
///
/// Outbound messages and the session's log lines are redacted with all of
/// them, so a late message (an artifact announcement after the request that
/// named the secret) is still covered. Dropped with the session, and with
/// it the automata.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionSecrets {
    state: Arc<RwLock<State>>,
    log: LogSecrets,
}

#[derive(Debug, Default)]
struct State {
    redactor: Redactor,
    bytes: usize,
}

impl SessionSecrets {
    /// Adds secrets and returns the redactor now in force, or refuses them
    /// all (the session keeps its secrets) if a limit would be exceeded.
    /// The matcher is rebuilt only when some secret is new.
    pub(crate) fn add(&self, secrets: &[String]) -> Result<Redactor, SecretsError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let known = state.redactor.secrets();
        let fresh: BTreeSet<&str> = secrets
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty() && known.binary_search_by(|k| k.as_str().cmp(s)).is_err())
            .collect();
        if fresh.is_empty() {
            return Ok(state.redactor.clone());
        }
        if let Some(len) = fresh
            .iter()
            .map(|s| s.len())
            .find(|&l| l > MAX_SECRET_BYTES)
        {
            return Err(SecretsError::SecretTooLong { len });
        }
        let count = known.len() + fresh.len();
        if count > MAX_SESSION_SECRETS {
            return Err(SecretsError::CountOverLimit { count });
        }
        let bytes = state.bytes + fresh.iter().map(|s| s.len()).sum::<usize>();
        if bytes > MAX_SESSION_SECRET_BYTES {
            return Err(SecretsError::BytesOverLimit { bytes });
        }
        let redactor = state.redactor.with(fresh);
        self.log.set(&redactor);
        *state = State {
            redactor: redactor.clone(),
            bytes,
        };
        Ok(redactor)
    }

    /// The redactor now in force.
    pub(crate) fn current(&self) -> Redactor {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .redactor
            .clone()
    }

    /// How many distinct secrets the session holds.
    pub(crate) fn count(&self) -> usize {
        self.current().secrets().len()
    }

    /// What the session's log lines are scrubbed of (kept current by
    /// [`add`](Self::add)), to attach to the session's span.
    pub(crate) fn log(&self) -> LogSecrets {
        self.log.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_secrets_accumulate() {
        let secrets = SessionSecrets::default();
        secrets.add(&["one-secret".into()]).unwrap();
        let r = secrets.add(&["two-secret".into(), String::new()]).unwrap();
        assert_eq!(
            r.redact_str("one-secret two-secret"),
            "[REDACTED] [REDACTED]"
        );
    }

    #[test]
    fn limits_refuse_the_request_and_keep_what_the_session_had() {
        let secrets = SessionSecrets::default();
        secrets.add(&["kept-secret".into()]).unwrap();
        let many: Vec<String> = (0..MAX_SESSION_SECRETS).map(|i| format!("s{i}")).collect();
        let err = secrets.add(&many).unwrap_err();
        assert_eq!(
            err,
            SecretsError::CountOverLimit {
                count: MAX_SESSION_SECRETS + 1
            }
        );
        assert!(err.to_string().contains("limit of 50000 per session"));
        let long = "x".repeat(MAX_SECRET_BYTES + 1);
        assert!(matches!(
            secrets.add(&[long]),
            Err(SecretsError::SecretTooLong { .. })
        ));
        let big: Vec<String> = (0..70)
            .map(|i| format!("{i:02}{}", "y".repeat(MAX_SECRET_BYTES - 2)))
            .collect();
        assert!(matches!(
            secrets.add(&big),
            Err(SecretsError::BytesOverLimit { .. })
        ));
        assert_eq!(secrets.current().secrets(), ["kept-secret"]);
        // Secrets already known cost nothing again.
        assert!(secrets.add(&["kept-secret".into()]).is_ok());
    }
}
