//! Optional HS256 JWT bearer tokens, for deployments that mint short-lived
//! credentials elsewhere. They carry the same grants as `mcp.db` tokens:
//!
//! ```json
//! {"sub": "ci-bot", "exp": 1767225600, "capabilities": ["read"], "paths": ["docs/**"]}
//! ```
//!
//! `capabilities` may instead be an OAuth-style `scope` string
//! (`"read write"`); `nbf` is honoured; `exp` is required. Only `alg: HS256`
//! is accepted (no `none`, no key confusion). The caller is recorded as
//! `jwt:<sub>` (actor `mcp:jwt:<sub>`). A JWT cannot be revoked on its own:
//! keep them short-lived, or rotate the secret.
//!
//! With an expected audience (`mcp.jwt_audience`) or issuer
//! (`mcp.jwt_issuer`) configured, a JWT must carry it (`aud`, a string or
//! an array of strings, must contain the audience; `iss` must equal the
//! issuer): a token minted for another service with the same secret is
//! refused.

use crate::error::{invalid as bail, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::tokens::{Capability, PathScope, Principal};

/// Clock skew tolerated on `exp` and `nbf`, seconds.
const LEEWAY: i64 = 30;

/// Verifies HS256 JWTs with one shared secret.
#[derive(Clone)]
pub struct JwtVerifier {
    key: Vec<u8>,
    /// The `aud` a JWT must name, when set.
    audience: Option<String>,
    /// The `iss` a JWT must carry, when set.
    issuer: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier(..)")
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    /// Read as any JSON value, so a JWT with an odd `aud` still works where
    /// no audience is configured.
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iss: Option<String>,
}

/// Whether `aud` (one string or an array of strings, RFC 7519 4.1.3) names `want`.
fn audience_contains(aud: Option<&serde_json::Value>, want: &str) -> bool {
    match aud {
        Some(serde_json::Value::String(a)) => a == want,
        Some(serde_json::Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(want)),
        _ => false,
    }
}

/// Whether a bearer credential looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

impl JwtVerifier {
    /// A verifier for `secret` (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < 32 {
            bail!("the JWT secret must be at least 32 bytes long");
        }
        Ok(JwtVerifier {
            key: secret.to_vec(),
            audience: None,
            issuer: None,
        })
    }

    /// Also requires `aud` to name `audience` (blank: no check).
    pub fn with_audience(mut self, audience: Option<&str>) -> Self {
        self.audience = audience
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        self
    }

    /// Also requires `iss` to be `issuer` (blank: no check).
    pub fn with_issuer(mut self, issuer: Option<&str>) -> Self {
        self.issuer = issuer
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_owned);
        self
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// Signs `claims` (for tests and tooling).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = self.mac();
        mac.update(format!("{head}.{body}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{head}.{body}.{sig}")
    }

    /// The principal a JWT stands for, if its signature and times are valid at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Option<Principal> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.alg != "HS256" {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(c.as_bytes());
        mac.verify_slice(&sig).ok()?; // constant time
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
        if claims.exp + LEEWAY <= now || claims.nbf.is_some_and(|n| n > now + LEEWAY) {
            return None;
        }
        if let Some(want) = &self.audience {
            if !audience_contains(claims.aud.as_ref(), want) {
                return None;
            }
        }
        if let Some(want) = &self.issuer {
            if claims.iss.as_deref() != Some(want.as_str()) {
                return None;
            }
        }
        if claims.sub.is_empty()
            || !claims
                .sub
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
        {
            return None;
        }
        let mut caps = Vec::new();
        let scope_words = claims.scope.as_deref().unwrap_or("").split_whitespace();
        for c in claims
            .capabilities
            .iter()
            .map(String::as_str)
            .chain(scope_words)
        {
            // An unknown capability makes the token invalid rather than quietly narrower.
            caps.push(c.parse::<Capability>().ok()?);
        }
        if caps.is_empty() {
            return None;
        }
        caps.sort();
        caps.dedup();
        Some(Principal {
            name: format!("jwt:{}", claims.sub),
            capabilities: caps,
            scope: PathScope::new(&claims.paths).ok()?,
            // Sessions and streams it opens end when it does.
            expires: Some(claims.exp.saturating_add(LEEWAY)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hs256_round_trip_and_rejections() {
        let v = JwtVerifier::new(&[7u8; 32]).unwrap();
        assert!(JwtVerifier::new(b"short").is_err());
        let t = v.sign(
            &json!({"sub": "bot", "exp": 2000, "capabilities": ["read"], "paths": ["docs/**"]}),
        );
        assert!(looks_like_jwt(&t) && !looks_like_jwt("svn_abc"));
        let p = v.verify(&t, 1000).unwrap();
        assert_eq!(p.name, "jwt:bot");
        assert!(p.can(Capability::Read) && !p.can(Capability::Write));
        assert!(p.scope.allows("docs/a.md") && !p.scope.allows("secret.txt"));
        // expired, not yet valid
        assert!(v.verify(&t, 2000 + LEEWAY).is_none());
        let nbf = v.sign(&json!({"sub": "bot", "exp": 9000, "nbf": 5000, "scope": "read write"}));
        assert!(v.verify(&nbf, 1000).is_none());
        assert!(v.verify(&nbf, 5000).unwrap().can(Capability::Write));
        // another key, tampered claims, alg none, unknown capability, no capability
        let other = JwtVerifier::new(&[8u8; 32]).unwrap();
        assert!(other.verify(&t, 1000).is_none());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"bot","exp":2000,"capabilities":["admin"]}"#);
        parts[1] = &forged;
        assert!(v.verify(&parts.join("."), 1000).is_none());
        let none_head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let none = format!("{none_head}.{forged}.");
        assert!(v.verify(&none, 1000).is_none());
        let bad = v.sign(&json!({"sub": "bot", "exp": 2000, "capabilities": ["root"]}));
        assert!(v.verify(&bad, 1000).is_none());
        let empty = v.sign(&json!({"sub": "bot", "exp": 2000}));
        assert!(v.verify(&empty, 1000).is_none());
        let no_exp = v.sign(&json!({"sub": "bot", "capabilities": ["read"]}));
        assert!(v.verify(&no_exp, 1000).is_none());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let key = [9u8; 32];
        let claims = |extra: serde_json::Value| {
            let mut c = json!({"sub": "bot", "exp": 2000, "capabilities": ["read"]});
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            c
        };
        let plain = JwtVerifier::new(&key).unwrap();
        let strict = JwtVerifier::new(&key)
            .unwrap()
            .with_audience(Some("sovryn-mcp"))
            .with_issuer(Some("https://idp.example"));
        let good = plain.sign(&claims(
            json!({"aud": "sovryn-mcp", "iss": "https://idp.example"}),
        ));
        let many = plain.sign(&claims(
            json!({"aud": ["other", "sovryn-mcp"], "iss": "https://idp.example"}),
        ));
        assert!(strict.verify(&good, 1000).is_some());
        assert!(strict.verify(&many, 1000).is_some());
        // Missing or foreign audience or issuer: refused.
        for bad in [
            json!({}),
            json!({"iss": "https://idp.example"}),
            json!({"aud": "sovryn-mcp"}),
            json!({"aud": "other", "iss": "https://idp.example"}),
            json!({"aud": ["a", "b"], "iss": "https://idp.example"}),
            json!({"aud": "sovryn-mcp", "iss": "https://evil.example"}),
            json!({"aud": 7, "iss": "https://idp.example"}),
        ] {
            let t = plain.sign(&claims(bad.clone()));
            assert!(strict.verify(&t, 1000).is_none(), "{bad}");
        }
        // Without the settings, aud and iss are not looked at.
        assert!(plain
            .verify(&plain.sign(&claims(json!({}))), 1000)
            .is_some());
        assert!(plain
            .verify(&plain.sign(&claims(json!({"aud": 7}))), 1000)
            .is_some());
        let blank = JwtVerifier::new(&key)
            .unwrap()
            .with_audience(Some(" "))
            .with_issuer(None);
        assert!(blank
            .verify(&plain.sign(&claims(json!({}))), 1000)
            .is_some());
        // The expiry is carried, so sessions end with the JWT.
        assert_eq!(
            plain.verify(&good, 1000).unwrap().expires,
            Some(2000 + LEEWAY)
        );
    }
}
