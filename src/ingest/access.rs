//! Bearer-token access: the token is loaded once, compared in constant time, and never
//! printed (not by Debug, not in errors).

use crate::config::security::AuthConfig;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use std::collections::HashMap;

pub(crate) struct BearerToken(Box<[u8]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from its file or environment variable (`env`: the process's).
    pub(crate) fn load(
        config: &AuthConfig,
        env: &HashMap<String, String>,
    ) -> Result<BearerToken, String> {
        let token = match (&config.bearer_token_file, &config.bearer_token_env) {
            (Some(file), None) => std::fs::read_to_string(file).map_err(|e| {
                format!("cannot read the bearer token file {}: {e}", file.display())
            })?,
            (None, Some(name)) => env
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the bearer token variable {name} is not set"))?,
            _ => return Err("set exactly one of bearer_token_file and bearer_token_env".into()),
        };
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the bearer token must be non-empty printable ASCII without spaces".into());
        }
        Ok(BearerToken(token.as_bytes().into()))
    }

    /// The request carries `Authorization: Bearer <token>`.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(scheme) = value.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ")
            && constant_time_eq(value[7..].trim_ascii(), &self.0)
    }
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn token(value: &str) -> BearerToken {
        let env = HashMap::from([("TOKEN".to_string(), value.to_string())]);
        let config = AuthConfig {
            bearer_token_file: None,
            bearer_token_env: Some("TOKEN".into()),
        };
        BearerToken::load(&config, &env).expect("token")
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("value"),
        );
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = token("s3cret-token\n");
        assert!(t.allows(&headers("Bearer s3cret-token")));
        assert!(t.allows(&headers("bearer s3cret-token")));
        assert!(!t.allows(&headers("Bearer s3cret-tokeN")));
        assert!(!t.allows(&headers("Bearer s3cret")));
        assert!(!t.allows(&headers("Basic s3cret-token")));
        assert!(!t.allows(&headers("Bearer")));
        assert!(!t.allows(&HeaderMap::new()));
    }

    #[test]
    fn the_token_never_shows() {
        let t = token("s3cret-token");
        assert!(!format!("{t:?}").contains("s3cret"));
        let missing = BearerToken::load(
            &AuthConfig {
                bearer_token_file: None,
                bearer_token_env: Some("NOPE".into()),
            },
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(missing.contains("NOPE"), "{missing}");
    }
}
