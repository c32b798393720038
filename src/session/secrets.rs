//! The secrets a session has been told about.

use std::sync::{Arc, RwLock};

use crate::redact::Redactor;

/// Every secret the session has been told about, across its requests.
///
/// Outbound messages and logs are redacted with all of them, so a late
/// message (an artifact announcement after the request that named the
/// secret) is still covered.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionSecrets(Arc<RwLock<Redactor>>);

impl SessionSecrets {
    /// Adds secrets and returns the redactor now in force.
    pub(crate) fn add(&self, secrets: &[String]) -> Redactor {
        crate::logging::remember_secrets(secrets);
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let known = guard.secrets();
        if secrets
            .iter()
            .any(|s| !s.is_empty() && known.binary_search(s).is_err())
        {
            *guard = guard.with(secrets);
        }
        guard.clone()
    }

    /// The redactor now in force.
    pub(crate) fn current(&self) -> Redactor {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_secrets_accumulate() {
        let secrets = SessionSecrets::default();
        secrets.add(&["one-secret".into()]);
        let r = secrets.add(&["two-secret".into(), String::new()]);
        assert_eq!(
            r.redact_str("one-secret two-secret"),
            "[REDACTED] [REDACTED]"
        );
    }
}
