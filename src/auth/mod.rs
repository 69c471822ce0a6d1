//! Session tokens and login.
//!
//! A session token is `v1.<claims>.<mac>`: base64url JSON claims (user, device, expiry, kind) and an
//! HMAC-SHA256 over `v1.<claims>` with the cluster's token secret. Every node holding the same
//! secret accepts every other node's tokens, so a client may log in through any node and stream
//! to another. Identity always comes from a verified token, never from a request field.
//!
//! Login modes: `dev` accepts any well-formed user id (loopback only, unless explicitly made
//! insecure); `jwt` accepts a JWT issued by the application's backend, whose `sub` is the user
//! id (see `jwt`: a shared secret, a public key or a JWK set).
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tonic::metadata::MetadataMap;

mod jwt;

pub use jsonwebtoken::Algorithm;
pub use jwt::{JwtConfigError, JwtVerifier, sign_jwt};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_PREFIX: &str = "v1.";

/// Why a credential was refused. All map to `UNAUTHENTICATED` except [`AuthError::Forbidden`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send `authorization: Bearer <token>` from Gateway.Login")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("wrong kind of token for this call")]
    WrongKind,
    #[error("jwt rejected: {0}")]
    Jwt(String),
    #[error("{0}")]
    Forbidden(String),
    /// A relay caller without a node certificate of the cluster.
    #[error("{0}")]
    Certificate(String),
    /// The device logged out after this token was issued.
    #[error("token revoked: the device logged out; log in again")]
    Revoked,
}

impl AuthError {
    /// True when the caller is known but not allowed (`PERMISSION_DENIED`).
    pub fn is_permission(&self) -> bool {
        matches!(self, AuthError::Forbidden(_))
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A user's device: Chat.Session, Gateway.Send, Presence.
    Session,
    /// A tim node calling another node's Relay service.
    Node,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id (or node id for [`TokenKind::Node`]).
    pub sub: String,
    /// Device id; empty for node tokens.
    pub dev: String,
    /// Expiry, Unix epoch seconds.
    pub exp: i64,
    pub kind: TokenKind,
    /// When it was issued, Unix epoch milliseconds: a logout revokes every token of the device
    /// issued up to then.
    #[serde(default)]
    pub iat_ms: i64,
}

/// Issues and verifies session tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    /// A signer with a random 256-bit key (dev mode: tokens die with the process).
    pub fn random() -> Self {
        Self::new(rand::random::<[u8; 32]>().to_vec())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    /// Signs `claims` into a token string.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let signed = format!("{TOKEN_PREFIX}{}", B64.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Issues a token for `sub`/`dev` valid for `ttl`; returns it with its expiry (Unix ms).
    pub fn issue(&self, kind: TokenKind, sub: &str, dev: &str, ttl: Duration) -> (String, i64) {
        let now = SystemTime::now();
        let exp_ms = unix_ms(now + ttl);
        let (sub, dev) = (sub.to_string(), dev.to_string());
        let claims = Claims { sub, dev, exp: exp_ms / 1000, kind, iat_ms: unix_ms(now) };
        (self.sign(&claims), exp_ms)
    }

    /// Verifies signature, expiry and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(AuthError::Malformed)?;
        let (payload, sig) = rest.split_once('.').ok_or(AuthError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..TOKEN_PREFIX.len() + payload.len()]);
        mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
        let json = B64.decode(payload).map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
        if claims.exp <= unix_ms(SystemTime::now()) / 1000 {
            return Err(AuthError::Expired);
        }
        if claims.kind != kind {
            return Err(AuthError::WrongKind);
        }
        Ok(claims)
    }

    /// Verifies the `authorization: Bearer <token>` of a request.
    pub fn verify_metadata(&self, md: &MetadataMap, kind: TokenKind) -> Result<Claims, AuthError> {
        let value = md.get("authorization").ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?;
        self.verify(token.trim(), kind)
    }
}

/// How Gateway.Login establishes who the caller is.
#[derive(Clone)]
pub enum LoginMode {
    /// Any well-formed user id is accepted as is.
    Dev,
    /// A JWT from the application's backend is required; its `sub` is the user.
    Jwt(Arc<JwtVerifier>),
}

impl LoginMode {
    /// Returns the user id the caller proved: in dev mode the one `requested`, in JWT mode the
    /// token's subject. The caller checks the id's form and that it is the one requested.
    pub fn authenticate(&self, requested: &str, jwt: &str) -> Result<String, AuthError> {
        match self {
            LoginMode::Dev => Ok(requested.to_string()),
            LoginMode::Jwt(verifier) => {
                if jwt.is_empty() {
                    return Err(AuthError::Jwt("login needs a jwt in this mode".into()));
                }
                verifier.subject(jwt)
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_tamper() {
        let s = TokenSigner::new(b"k".to_vec());
        let (t, _) = s.issue(TokenKind::Session, "alice", "phone", Duration::from_secs(60));
        let c = s.verify(&t, TokenKind::Session).unwrap();
        assert_eq!((c.sub.as_str(), c.dev.as_str()), ("alice", "phone"));
        assert!(matches!(s.verify(&t, TokenKind::Node), Err(AuthError::WrongKind)));
        let other = TokenSigner::new(b"x".to_vec());
        assert!(matches!(other.verify(&t, TokenKind::Session), Err(AuthError::BadSignature)));
        // Swap in claims for another user under the same signature.
        let forged = Claims { sub: "mallory".into(), ..c };
        let forged_payload = s.sign(&forged);
        let sig = t.rsplit('.').next().unwrap();
        let (head, _) = forged_payload.rsplit_once('.').unwrap();
        assert!(s.verify(&format!("{head}.{sig}"), TokenKind::Session).is_err());
    }

    #[test]
    fn expired_token_is_refused() {
        let s = TokenSigner::new(b"k".to_vec());
        let claims = Claims {
            sub: "a".into(),
            dev: "d".into(),
            exp: 1,
            kind: TokenKind::Session,
            iat_ms: 0,
        };
        assert!(matches!(s.verify(&s.sign(&claims), TokenKind::Session), Err(AuthError::Expired)));
    }
}
