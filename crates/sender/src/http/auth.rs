//! API keys: `Authorization: Bearer <key>` identifies the client. The scheme is case-insensitive
//! (RFC 9110 §11.1); an empty key never authenticates, and no configured key can be empty.
//!
//! Keys are kept only as SHA-256 digests (the configuration may hold nothing else), and a presented
//! key's digest is compared with every known digest in constant time, so neither a memory dump nor
//! response timing reveals a key.

use std::path::Path;

use accrual_core::api_key::{self, DIGEST_PREFIX, valid_client_id};
use axum::http::{HeaderMap, header};

use super::error::ApiError;

/// The clients' API keys.
#[derive(Debug, Clone, clap::Args)]
pub struct KeySettings {
    /// Clients and their keys, comma-separated: `client:sha256:<hex digest>` (what `accrualctl keys
    /// new` prints) or, for development, `client:key`. None by default: set it, or
    /// `ACCRUAL_API_KEYS_FILE`, or both.
    #[arg(
        long,
        env = "ACCRUAL_API_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub accrual_api_keys: String,

    /// A file of further keys, one `client:sha256:<hex digest>` per line (`#` comments).
    #[arg(long, env = "ACCRUAL_API_KEYS_FILE")]
    pub accrual_api_keys_file: Option<std::path::PathBuf>,
}

impl ApiKeys {
    /// The keys of `ACCRUAL_API_KEYS` and `ACCRUAL_API_KEYS_FILE`; an error names the setting at
    /// fault, or says that neither gives a key.
    pub fn from_settings(settings: &KeySettings) -> Result<Self, String> {
        let mut keys = Self::parse(&settings.accrual_api_keys)
            .map_err(|e| format!("Invalid ACCRUAL_API_KEYS: {e}"))?;
        if let Some(path) = &settings.accrual_api_keys_file {
            keys.add_file(path)
                .map_err(|e| format!("Invalid ACCRUAL_API_KEYS_FILE: {e}"))?;
        }
        keys.require_some()
            .map_err(|e| format!("Set ACCRUAL_API_KEYS or ACCRUAL_API_KEYS_FILE: {e}"))
    }
}

/// Known clients and the digests of their keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut clients: Vec<&String> = self.keys.iter().map(|(_, c)| c).collect();
        clients.sort();
        clients.dedup();
        f.debug_struct("ApiKeys")
            .field("clients", &clients)
            .finish()
    }
}

impl ApiKeys {
    /// The clients that have a key, each once, sorted.
    pub fn clients(&self) -> Vec<String> {
        let mut clients: Vec<String> = self.keys.iter().map(|(_, c)| c.clone()).collect();
        clients.sort();
        clients.dedup();
        clients
    }

    /// Parses comma-separated entries, each `client:sha256:<64 hex digits>` or (development only)
    /// `client:<key>`. A client may have several keys (for rotation).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys = Self::default();
        for entry in spec.split(',') {
            keys.add_entry(entry)?;
        }
        Ok(keys)
    }

    /// Adds the entries of a key file: one entry per line, `#` starts a comment.
    pub fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or_default();
            self.add_entry(entry)
                .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        }
        Ok(())
    }

    fn add_entry(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Ok(());
        }
        let (client, key) = entry
            .split_once(':')
            .ok_or_else(|| format!("`{entry}` is not client:sha256:<digest> or client:key"))?;
        if !valid_client_id(client) {
            return Err(format!(
                "client id `{client}` must be 1-64 characters of [A-Za-z0-9_.-]"
            ));
        }
        let digest = match key.strip_prefix(DIGEST_PREFIX) {
            Some(hex) => api_key::parse_hex(hex)
                .filter(|digest| *digest != api_key::digest(""))
                .ok_or_else(|| {
                    format!(
                        "the key digest of `{client}` must be 64 hex digits after `sha256:`, of a key that is not empty"
                    )
                })?,
            None if key.len() >= 4 && key.bytes().all(|b| b.is_ascii_graphic()) => {
                api_key::digest(key)
            }
            None => {
                return Err(format!(
                    "the key of `{client}` must be at least 4 visible characters"
                ));
            }
        };
        if self.keys.iter().any(|(d, _)| *d == digest) {
            return Err(format!("the key of `{client}` is given twice"));
        }
        self.keys.push((digest, client.to_owned()));
        Ok(())
    }

    /// Refuses a configuration without any key.
    pub fn require_some(self) -> Result<Self, String> {
        if self.keys.is_empty() {
            return Err("no API keys configured".into());
        }
        Ok(self)
    }

    /// The client whose key the request carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_key)
            .ok_or(ApiError::Unauthorized)?;
        let presented = api_key::digest(key);
        // Every digest is compared, whether or not an earlier one matched.
        let mut found = None;
        for (digest, client) in &self.keys {
            if api_key::digests_equal(digest, &presented) {
                found = Some(client);
            }
        }
        found.cloned().ok_or(ApiError::Unauthorized)
    }
}

/// The key of an `Authorization` value with the `Bearer` scheme in any case; `None` for another
/// scheme or an empty key.
fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn a_known_key_names_its_client() {
        let keys = ApiKeys::parse("client_a:key_a, client_b:key_b").expect("valid");
        assert_eq!(
            keys.authenticate(&headers("Bearer key_b")).ok(),
            Some("client_b".into())
        );
    }

    #[test]
    fn a_key_given_as_its_digest_authenticates_the_key() {
        let key = api_key::generate();
        let keys = ApiKeys::parse(&api_key::config_entry("crm", &key)).expect("valid");
        assert_eq!(
            keys.authenticate(&headers(&format!("Bearer {key}"))).ok(),
            Some("crm".into())
        );
        assert!(keys.authenticate(&headers("Bearer acr_0")).is_err());
    }

    #[test]
    fn a_key_file_holds_one_entry_per_line_with_comments() {
        let path = std::env::temp_dir().join(format!("accrual-keys-{}", std::process::id()));
        let key = api_key::generate();
        std::fs::write(
            &path,
            format!(
                "# production clients\n\n{}  # rotated 2026-11\nlegacy:old_key\n",
                api_key::config_entry("crm", &key)
            ),
        )
        .expect("write");
        let mut keys = ApiKeys::default();
        keys.add_file(&path).expect("valid file");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            keys.authenticate(&headers(&format!("Bearer {key}"))).ok(),
            Some("crm".into())
        );
        assert_eq!(
            keys.authenticate(&headers("Bearer old_key")).ok(),
            Some("legacy".into())
        );
    }

    #[test]
    fn unknown_missing_or_non_bearer_keys_are_refused() {
        let keys = ApiKeys::parse("client_a:key_a").expect("valid");
        for auth in ["Bearer nope", "Basic key_a", "key_a"] {
            assert!(matches!(
                keys.authenticate(&headers(auth)),
                Err(ApiError::Unauthorized)
            ));
        }
        assert!(matches!(
            keys.authenticate(&HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let keys = ApiKeys::parse("client_a:key_a").expect("valid");
        for auth in [
            "bearer key_a",
            "BEARER key_a",
            "BeArEr   key_a",
            "Bearer key_a ",
        ] {
            assert_eq!(
                keys.authenticate(&headers(auth)).ok(),
                Some("client_a".into()),
                "{auth}"
            );
        }
        assert!(keys.authenticate(&headers("Bearerkey_a")).is_err());
    }

    #[test]
    fn an_empty_key_never_authenticates() {
        // Even a configuration holding the digest of the empty key could not be matched: it is
        // refused at start-up, and an empty presented key is refused before any comparison.
        let empty_digest = format!("sha256:{}", api_key::hex(&api_key::digest("")));
        assert!(ApiKeys::parse(&format!("client_x:{empty_digest}")).is_err());
        assert!(ApiKeys::parse("client_x:").is_err());
        assert!(ApiKeys::parse("client_x: ").is_err());
        let keys = ApiKeys::parse("client_a:key_a").expect("valid");
        for auth in ["Bearer", "Bearer ", "bearer   ", ""] {
            assert!(
                matches!(
                    keys.authenticate(&headers(auth)),
                    Err(ApiError::Unauthorized)
                ),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        assert!(ApiKeys::parse("").expect("empty").require_some().is_err());
        assert!(ApiKeys::parse("client_a").is_err());
        assert!(ApiKeys::parse("a b:key_a").is_err());
        assert!(ApiKeys::parse("a:k").is_err());
        assert!(ApiKeys::parse("a:key_a,b:key_a").is_err());
        assert!(ApiKeys::parse("a:sha256:abc").is_err());
    }

    #[test]
    fn debug_output_shows_clients_not_keys() {
        let keys = ApiKeys::parse("client_a:secret_key").expect("valid");
        let shown = format!("{keys:?}");
        assert!(shown.contains("client_a") && !shown.contains("secret_key"));
    }
}
