//! API keys: `Authorization: Bearer <key>` identifies the client.
//!
//! Keys are kept only as SHA-256 digests, so the process never compares secrets byte by byte and a
//! memory dump does not reveal them.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Known clients, by the digest of their key.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut clients: Vec<&String> = self.by_digest.values().collect();
        clients.sort();
        f.debug_struct("ApiKeys")
            .field("clients", &clients)
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Parses `client_a:key_a,client_b:key_b`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (client, key) = pair
                .split_once(':')
                .ok_or_else(|| format!("`{pair}` is not client:key"))?;
            let valid_client = !client.is_empty()
                && client.len() <= 64
                && client
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid_client {
                return Err(format!(
                    "client id `{client}` must be 1-64 characters of [A-Za-z0-9_.-]"
                ));
            }
            if key.len() < 4 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "the key of `{client}` must be at least 4 visible characters"
                ));
            }
            if by_digest.insert(digest(key), client.to_owned()).is_some() {
                return Err(format!("the key of `{client}` is given twice"));
            }
        }
        if by_digest.is_empty() {
            return Err("no API keys configured".into());
        }
        Ok(Self { by_digest })
    }

    /// The client whose key the request carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        self.by_digest
            .get(&digest(key))
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
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
    fn bad_specs_are_refused_with_a_reason() {
        assert!(ApiKeys::parse("").is_err());
        assert!(ApiKeys::parse("client_a").is_err());
        assert!(ApiKeys::parse("a b:key_a").is_err());
        assert!(ApiKeys::parse("a:k").is_err());
        assert!(ApiKeys::parse("a:key_a,b:key_a").is_err());
    }

    #[test]
    fn debug_output_shows_clients_not_keys() {
        let keys = ApiKeys::parse("client_a:secret_key").expect("valid");
        let shown = format!("{keys:?}");
        assert!(shown.contains("client_a") && !shown.contains("secret_key"));
    }
}
