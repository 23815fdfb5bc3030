//! Authentication: bearer JWTs verified against configured keys, turned into a [`Principal`].
//!
//! Keys: an RS256/ES256 public key set (a JWKS file or URL, reloaded every
//! `jwks_refresh_ms` and at most once per [`UNKNOWN_KID_REFRESH`] when a token names a key
//! id we do not know, so a rotation at the identity provider is picked up) and, for
//! development, an HS256 secret. A token's `alg` must match the family of the key it
//! selects: `none`, an HS256 token when no secret is configured, or an HS256 token "signed"
//! with an RSA public key are all rejected. Checks: signature, `exp` and `nbf` with a small
//! leeway, `iss`, `aud`, and a usable `sub`. Why a token failed is logged at debug level and
//! never told to the client beyond RFC 6750's `invalid_token`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::policy::Role;

/// The shortest interval between two key-set reloads caused by unknown key ids.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);
const MAX_SUBJECT_LEN: usize = 128;
/// A verified token is trusted again without re-verification for at most this long (never
/// past its `exp`), so a removed JWKS key stops working within this time.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Verified tokens remembered at once; beyond, expired entries (then all) are dropped.
const VERIFIED_CAPACITY: usize = 10_000;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where the public key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    /// HS256 secret for development tokens; `None` disables HS256 entirely.
    pub dev_secret: Option<SecretString>,
    pub jwks: Option<JwksSource>,
    pub jwks_refresh: Duration,
    /// The claim carrying the roles: an array of role names or one name.
    pub roles_claim: String,
}

/// Who is calling, as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the acting user, recorded in every audit row.
    pub subject: String,
    pub roles: Vec<Role>,
    /// For the `patient` role: the only patient record the caller may see.
    pub patient_id: Option<Uuid>,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token was sent and failed a check.
    Invalid,
}

/// One verification key with the algorithm it is for.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Key {
    /// Whether this key verifies `algorithm` tokens naming `kid` (any key of the algorithm
    /// when the token names none).
    fn matches(&self, algorithm: Algorithm, kid: Option<&str>) -> bool {
        self.algorithm == algorithm && (kid.is_none() || self.kid.as_deref() == kid)
    }
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    dev_key: Option<DecodingKey>,
    keys: RwLock<Arc<Vec<Key>>>,
    last_reload: Mutex<Instant>,
    http: reqwest::Client,
    /// Recently verified tokens: verification (base64, JSON, signature) is the dearest part
    /// of a cheap read, and a client sends the same token for many requests.
    verified: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.inner.settings.issuer)
            .field("audience", &self.inner.settings.audience)
            .field("jwks", &self.inner.settings.jwks)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the authenticator and loads the key set once; a key set that cannot be loaded
    /// stops start-up.
    pub async fn new(settings: AuthSettings) -> anyhow::Result<Self> {
        let dev_key = settings
            .dev_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.expose_secret().as_bytes()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let authenticator = Self {
            inner: Arc::new(Inner {
                settings,
                dev_key,
                keys: RwLock::new(Arc::new(Vec::new())),
                last_reload: Mutex::new(Instant::now()),
                http,
                verified: Mutex::new(HashMap::new()),
            }),
        };
        if authenticator.inner.settings.jwks.is_some() {
            authenticator.reload_keys().await?;
        }
        Ok(authenticator)
    }

    /// Reloads the key set every `jwks_refresh`; a failed reload keeps the previous keys.
    pub fn spawn_refresh(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.settings.jwks.as_ref()?;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(this.inner.settings.jwks_refresh);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if let Err(error) = this.reload_keys().await {
                    tracing::warn!(error = %error, "cannot reload the JWKS; keeping the previous keys");
                }
            }
        }))
    }

    /// Reads the key set from its source and replaces the current keys.
    pub async fn reload_keys(&self) -> anyhow::Result<usize> {
        let Some(source) = &self.inner.settings.jwks else {
            return Ok(0);
        };
        let text = match source {
            JwksSource::File(path) => tokio::fs::read_to_string(path).await.map_err(|error| {
                anyhow::anyhow!("cannot read the JWKS file {}: {error}", path.display())
            })?,
            JwksSource::Url(url) => {
                let response = self
                    .inner
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|error| anyhow::anyhow!("cannot fetch the JWKS: {error}"))?;
                let bytes = response.bytes().await?;
                if bytes.len() > MAX_JWKS_BYTES {
                    anyhow::bail!("the JWKS document exceeds {MAX_JWKS_BYTES} bytes");
                }
                String::from_utf8(bytes.to_vec())?
            }
        };
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|error| anyhow::anyhow!("the JWKS is not a valid key set: {error}"))?;
        let keys = keys_from_set(&set);
        if keys.is_empty() {
            anyhow::bail!("the JWKS holds no usable RS256 or ES256 key");
        }
        let count = keys.len();
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        *self
            .inner
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        tracing::info!(keys = count, "loaded the JWKS");
        Ok(count)
    }

    /// Verifies the `Authorization` header value and returns the principal.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Principal, AuthFailure> {
        let Some(authorization) = authorization else {
            return Err(AuthFailure::Missing);
        };
        let token = match authorization.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                tracing::debug!("authorization header is not a bearer token");
                return Err(AuthFailure::Invalid);
            }
        };
        if let Some(principal) = self.cached(token) {
            return Ok(principal);
        }
        match self.verify(token).await {
            Ok((principal, expires_at)) => {
                self.remember(token, &principal, expires_at);
                Ok(principal)
            }
            Err(reason) => {
                tracing::debug!(reason, "token rejected");
                Err(AuthFailure::Invalid)
            }
        }
    }

    /// A principal verified from this exact token within [`VERIFIED_TTL`] and not expired.
    fn cached(&self, token: &str) -> Option<Principal> {
        let cache = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (principal, valid_until) = cache.get(token)?;
        (Instant::now() < *valid_until).then(|| principal.clone())
    }

    fn remember(&self, token: &str, principal: &Principal, expires_at: i64) {
        let seconds_left = expires_at.saturating_sub(chrono::Utc::now().timestamp());
        let Ok(seconds_left) = u64::try_from(seconds_left) else {
            return;
        };
        let valid_until = Instant::now() + VERIFIED_TTL.min(Duration::from_secs(seconds_left));
        let mut cache = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CAPACITY {
            let now = Instant::now();
            cache.retain(|_, (_, valid_until)| *valid_until > now);
            if cache.len() >= VERIFIED_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (principal.clone(), valid_until));
    }

    /// Returns the principal and the token's `exp`.
    async fn verify(&self, token: &str) -> Result<(Principal, i64), &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed header")?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.inner.dev_key.as_ref().ok_or("HS256 is not enabled")?;
                self.decode(token, Algorithm::HS256, key)?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref();
                let keys = self.keys_for(header.alg, kid).await;
                let key = keys
                    .iter()
                    .find(|key| key.matches(header.alg, kid))
                    .ok_or("no key for this algorithm and key id")?;
                self.decode(token, header.alg, &key.key)?
            }
            _ => return Err("algorithm not accepted"),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("exp is not an integer")?;
        Ok((self.principal(claims)?, expires_at))
    }

    /// The current keys; when none matches `kid`, reloads once (rate limited) first.
    async fn keys_for(&self, algorithm: Algorithm, kid: Option<&str>) -> Arc<Vec<Key>> {
        let current = self.current_keys();
        let known = current.iter().any(|key| key.matches(algorithm, kid));
        if known || self.inner.settings.jwks.is_none() {
            return current;
        }
        let due = {
            let mut last = self
                .inner
                .last_reload
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= UNKNOWN_KID_REFRESH {
                // Claim the slot so concurrent requests do not all reload.
                *last = Instant::now();
                true
            } else {
                false
            }
        };
        if due && let Err(error) = self.reload_keys().await {
            tracing::warn!(error = %error, "cannot reload the JWKS for an unknown key id");
        }
        self.current_keys()
    }

    fn current_keys(&self) -> Arc<Vec<Key>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn decode(
        &self,
        token: &str,
        algorithm: Algorithm,
        key: &DecodingKey,
    ) -> Result<Map<String, Value>, &'static str> {
        let settings = &self.inner.settings;
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired",
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "not yet valid",
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer",
                jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => "algorithm mismatch",
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => "missing claim",
                _ => "invalid token",
            })
    }

    fn principal(&self, claims: Map<String, Value>) -> Result<Principal, &'static str> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| {
                !sub.is_empty()
                    && sub.len() <= MAX_SUBJECT_LEN
                    && !sub.chars().any(char::is_control)
            })
            .ok_or("unusable subject")?
            .to_owned();
        let roles = match claims.get(&self.inner.settings.roles_claim) {
            Some(Value::String(name)) => Role::parse(name).into_iter().collect(),
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Role::parse)
                .collect(),
            _ => Vec::new(),
        };
        let patient_id = match claims.get("patient_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(Uuid::parse_str(id).map_err(|_| "bad patient_id")?),
            Some(_) => return Err("bad patient_id"),
        };
        Ok(Principal {
            subject,
            roles,
            patient_id,
        })
    }
}

fn keys_from_set(set: &JwkSet) -> Vec<Key> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            _ => None,
        };
        let algorithm = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::RS256) if inferred == Some(Algorithm::RS256) => inferred,
            Some(KeyAlgorithm::ES256) if inferred == Some(Algorithm::ES256) => inferred,
            Some(_) => None,
        };
        let Some(algorithm) = algorithm else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that is not RS256 or ES256");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            }),
            Err(error) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %error, "skipping an unusable JWKS key");
            }
        }
    }
    keys
}

/// What `medflow token` puts in a development token.
#[derive(Debug, Clone)]
pub struct DevToken {
    pub subject: String,
    pub roles: Vec<Role>,
    pub patient_id: Option<Uuid>,
    pub ttl: Duration,
}

/// Mints an HS256 token with the development secret, accepted when that secret is configured.
pub fn mint_dev_token(settings: &AuthSettings, token: &DevToken) -> anyhow::Result<String> {
    let secret = settings.dev_secret.as_ref().ok_or_else(|| {
        anyhow::anyhow!("auth.dev_hs256_secret is not set: development tokens are disabled")
    })?;
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": token.subject,
        "iat": now,
        "nbf": now,
        "exp": now + i64::try_from(token.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        "jti": Uuid::new_v4(),
    });
    claims[&settings.roles_claim] =
        json!(token.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>());
    if let Some(patient_id) = token.patient_id {
        claims["patient_id"] = json!(patient_id);
    }
    let key = EncodingKey::from_secret(secret.expose_secret().as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            issuer: "medflow-test".into(),
            audience: "medflow".into(),
            leeway: Duration::from_secs(0),
            dev_secret: Some("a-test-secret-that-is-long-enough-for-hs256".into()),
            jwks: None,
            jwks_refresh: Duration::from_secs(300),
            roles_claim: "roles".into(),
        }
    }

    fn token(ttl: Duration) -> String {
        mint_dev_token(
            &settings(),
            &DevToken {
                subject: "0195f6a2-0000-7000-8000-000000000001".into(),
                roles: vec![Role::Doctor],
                patient_id: None,
                ttl,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_but_never_past_its_expiry() {
        let authenticator = Authenticator::new(settings()).await.unwrap();
        let long = token(Duration::from_secs(3600));
        let header = format!("Bearer {long}");
        let principal = authenticator.authenticate(Some(&header)).await.unwrap();
        assert_eq!(principal.roles, vec![Role::Doctor]);
        assert_eq!(authenticator.cached(&long), Some(principal));

        // A token already past its expiry is neither accepted nor remembered.
        authenticator.remember("expired", &authenticator.cached(&long).unwrap(), 0);
        assert_eq!(authenticator.cached("expired"), None);
        // A token expiring in 1 s is remembered for at most 1 s, not VERIFIED_TTL.
        let soon = chrono::Utc::now().timestamp() + 1;
        authenticator.remember("soon", &authenticator.cached(&long).unwrap(), soon);
        let cache = authenticator.inner.verified.lock().unwrap();
        let (_, valid_until) = cache.get("soon").unwrap();
        assert!(*valid_until <= Instant::now() + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn hs256_is_refused_when_no_secret_is_configured() {
        let tok = token(Duration::from_secs(60));
        let mut without_secret = settings();
        without_secret.dev_secret = None;
        let authenticator = Authenticator::new(without_secret).await.unwrap();
        assert_eq!(
            authenticator
                .authenticate(Some(&format!("Bearer {tok}")))
                .await,
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            authenticator.authenticate(None).await,
            Err(AuthFailure::Missing)
        );
    }
}
