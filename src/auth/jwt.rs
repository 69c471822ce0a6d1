//! JWT login on `jsonwebtoken` (a well-kept crate, rather than the hand-rolled HS256 this
//! replaced): the application's backend signs a JWT whose `sub` is the user, and Login checks
//! it. Keys: an HS256/384/512 shared secret of at least 32 bytes, a PEM public key (RSA: RS*/PS*,
//! EC: ES256/ES384, Ed25519: EdDSA), or a JWKS file (the key named by the token's `kid`).
//! `exp` and `sub` are required, `nbf` is honoured, `iss` and `aud` are checked when configured,
//! with a clock-skew leeway. Only algorithms of the key's family are accepted, so a token cannot
//! pick `none` or pass a public key off as an HMAC secret.
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use super::AuthError;

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET: usize = 32;

/// Why a JWT key or setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JwtConfigError(pub String);

/// Checks the JWTs Login is given.
pub struct JwtVerifier {
    /// (kid, key, validation): one entry for a secret or a PEM key, one per JWK for a JWKS.
    keys: Vec<(Option<String>, DecodingKey, Validation)>,
}

#[derive(Deserialize)]
struct Subject {
    sub: Option<String>,
}

impl JwtVerifier {
    /// HS256/384/512 with a shared secret of at least [`MIN_SECRET`] bytes.
    pub fn secret(secret: &[u8]) -> Result<Self, JwtConfigError> {
        if secret.len() < MIN_SECRET {
            return Err(JwtConfigError(format!(
                "the JWT secret must be at least {MIN_SECRET} bytes"
            )));
        }
        Ok(Self::single(DecodingKey::from_secret(secret)))
    }

    /// The backend's public key, PEM: RSA, EC (P-256, P-384) or Ed25519.
    pub fn public_key(pem: &[u8]) -> Result<Self, JwtConfigError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| JwtConfigError("not an RSA, EC or Ed25519 public key in PEM".into()))?;
        Ok(Self::single(key))
    }

    /// A JSON Web Key Set; a token names its key by `kid` (a set of one needs none).
    pub fn jwks(json: &str) -> Result<Self, JwtConfigError> {
        let set: JwkSet = serde_json::from_str(json)
            .map_err(|e| JwtConfigError(format!("not a JWK set: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| JwtConfigError(format!("unusable JWK: {e}")))?;
            let mut validation = validation_for(&key);
            if let Some(alg) = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok()) {
                validation.algorithms = vec![alg];
            }
            keys.push((jwk.common.key_id.clone(), key, validation));
        }
        if keys.is_empty() {
            return Err(JwtConfigError("the JWK set has no keys".into()));
        }
        Ok(Self { keys })
    }

    fn single(key: DecodingKey) -> Self {
        let validation = validation_for(&key);
        Self { keys: vec![(None, key, validation)] }
    }

    /// Also require `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.keys.iter_mut().for_each(|(_, _, v)| v.set_issuer(&[issuer]));
        self
    }

    /// Also require `aud` to contain `audience`.
    pub fn audience(mut self, audience: &str) -> Self {
        for (_, _, v) in &mut self.keys {
            v.set_audience(&[audience]);
            v.validate_aud = true;
        }
        self
    }

    /// Clock skew allowed on `exp` and `nbf`.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.keys.iter_mut().for_each(|(_, _, v)| v.leeway = leeway.as_secs());
        self
    }

    /// The `sub` of a valid token.
    pub fn subject(&self, jwt: &str) -> Result<String, AuthError> {
        let (key, validation) = self.key_for(jwt)?;
        let data = jsonwebtoken::decode::<Subject>(jwt, key, validation).map_err(|e| {
            AuthError::Jwt(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not valid yet",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm not accepted for this key",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::MissingRequiredClaim(_) => "exp and sub are required",
                    _ => "malformed",
                }
                .into(),
            )
        })?;
        data.claims.sub.ok_or(AuthError::Jwt("exp and sub are required".into()))
    }

    fn key_for(&self, jwt: &str) -> Result<(&DecodingKey, &Validation), AuthError> {
        if let [(_, key, validation)] = self.keys.as_slice() {
            return Ok((key, validation));
        }
        let header =
            jsonwebtoken::decode_header(jwt).map_err(|_| AuthError::Jwt("malformed".into()))?;
        let kid = header.kid.ok_or(AuthError::Jwt("kid is required".into()))?;
        self.keys
            .iter()
            .find(|(id, _, _)| id.as_deref() == Some(kid.as_str()))
            .map(|(_, key, validation)| (key, validation))
            .ok_or(AuthError::Jwt("unknown kid".into()))
    }
}

/// Only the key's own family of algorithms; `exp` and `sub` required; no `aud` unless asked.
fn validation_for(key: &DecodingKey) -> Validation {
    let mut v = Validation::new_for_family(key.family());
    v.set_required_spec_claims(&["exp", "sub"]);
    v.validate_nbf = true;
    v.validate_aud = false;
    v.leeway = 30;
    v
}

/// Signs a JWT with `claims`: what an application backend does. `key` is a secret for HS*, or
/// a PEM private key for `alg`. Used by tests and tools.
pub fn sign_jwt(
    claims: &serde_json::Value,
    alg: Algorithm,
    key: &[u8],
    kid: Option<&str>,
) -> Result<String, JwtConfigError> {
    let bad = |e: jsonwebtoken::errors::Error| JwtConfigError(format!("cannot sign a JWT: {e}"));
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(key),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(key).map_err(bad)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key).map_err(bad)?,
        _ => EncodingKey::from_rsa_pem(key).map_err(bad)?,
    };
    let header = Header { kid: kid.map(str::to_string), ..Header::new(alg) };
    jsonwebtoken::encode(&header, claims, &key).map_err(bad)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> i64 {
        super::super::unix_ms(std::time::SystemTime::now()) / 1000
    }

    fn hs(claims: serde_json::Value) -> String {
        sign_jwt(&claims, Algorithm::HS256, SECRET, None).unwrap()
    }

    #[test]
    fn a_secret_checks_signature_expiry_and_required_claims() {
        assert!(JwtVerifier::secret(b"short").is_err());
        let v = JwtVerifier::secret(SECRET).unwrap().leeway(Duration::ZERO);
        assert_eq!(v.subject(&hs(json!({"sub": "bob", "exp": now() + 60}))).unwrap(), "bob");
        let other =
            sign_jwt(&json!({"sub": "bob", "exp": now() + 60}), Algorithm::HS256, &[7; 32], None)
                .unwrap();
        let refusal = |jwt: &str| v.subject(jwt).unwrap_err().to_string();
        assert!(refusal(&other).contains("bad signature"));
        assert!(refusal(&hs(json!({"sub": "bob", "exp": now() - 5}))).contains("expired"));
        assert!(refusal(&hs(json!({"sub": "bob"}))).contains("required"));
        assert!(refusal(&hs(json!({"exp": now() + 60}))).contains("required"));
        assert!(
            refusal(&hs(json!({"sub": "b", "exp": now() + 60, "nbf": now() + 30})))
                .contains("not valid yet")
        );
        assert!(refusal("a.b.c").contains("malformed"));
    }

    #[test]
    fn issuer_audience_and_leeway_are_checked() {
        let v = JwtVerifier::secret(SECRET).unwrap().issuer("https://app").audience("tim");
        let ok = hs(json!({"sub": "bob", "exp": now() + 60, "iss": "https://app", "aud": "tim"}));
        assert_eq!(v.subject(&ok).unwrap(), "bob");
        let refusal = |jwt: &str| v.subject(jwt).unwrap_err().to_string();
        assert!(
            refusal(&hs(json!({"sub": "b", "exp": now() + 60, "iss": "x", "aud": "tim"})))
                .contains("issuer")
        );
        assert!(
            refusal(&hs(json!({"sub": "b", "exp": now() + 60, "iss": "https://app", "aud": "y"})))
                .contains("audience")
        );
        // Within the default 30 s leeway, a just-expired token still counts.
        let skewed =
            hs(json!({"sub": "bob", "exp": now() - 5, "iss": "https://app", "aud": "tim"}));
        assert_eq!(v.subject(&skewed).unwrap(), "bob");
    }

    #[test]
    fn a_public_key_accepts_only_its_own_family() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let v = JwtVerifier::public_key(pair.public_key_pem().as_bytes()).unwrap();
        let claims = json!({"sub": "carol", "exp": now() + 60});
        let es =
            sign_jwt(&claims, Algorithm::ES256, pair.serialize_pem().as_bytes(), None).unwrap();
        assert_eq!(v.subject(&es).unwrap(), "carol");
        // The public key used as an HMAC secret (the classic confusion): refused.
        let confused =
            sign_jwt(&claims, Algorithm::HS256, pair.public_key_pem().as_bytes(), None).unwrap();
        assert!(v.subject(&confused).unwrap_err().to_string().contains("algorithm"));
        assert!(JwtVerifier::public_key(b"not a key").is_err());
    }

    #[test]
    fn a_jwk_set_picks_the_key_the_token_names() {
        use jsonwebtoken::jwk::{Jwk, JwkSet};
        let jwk = |pair: &rcgen::KeyPair, kid: &str| {
            let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(kid.into());
            jwk
        };
        let (a, b) = (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        );
        let set = JwkSet { keys: vec![jwk(&a, "a"), jwk(&b, "b")] };
        let v = JwtVerifier::jwks(&serde_json::to_string(&set).unwrap()).unwrap();
        let claims = json!({"sub": "dave", "exp": now() + 60});
        let sign = |pair: &rcgen::KeyPair, kid: Option<&str>| {
            sign_jwt(&claims, Algorithm::ES256, pair.serialize_pem().as_bytes(), kid).unwrap()
        };
        assert_eq!(v.subject(&sign(&b, Some("b"))).unwrap(), "dave");
        let refusal = |jwt: &str| v.subject(jwt).unwrap_err().to_string();
        assert!(refusal(&sign(&a, Some("b"))).contains("bad signature"), "a's token under b's kid");
        assert!(refusal(&sign(&a, Some("c"))).contains("unknown kid"));
        assert!(refusal(&sign(&a, None)).contains("kid is required"));
        assert!(JwtVerifier::jwks(r#"{"keys": []}"#).is_err());
    }
}
