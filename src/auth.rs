//! Who is asking, and which rooms they may read (contract section 4).
//!
//! Tokens are HS256 JWTs with a required `exp`, checked to the second like `nbf`; `iss` and
//! `aud` are required when `JWT_ISSUER` / `JWT_AUDIENCE` are set. The same [`Authenticator`]
//! serves Socket.IO handshakes, `refresh-token` and HTTP requests, so all apply one set of rules.
//! A verified token keeps its `exp` ([`Verified`]): a live socket's authority ends there
//! (see [`crate::expiry`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthMode, TokenClaims};
use crate::rooms::Room;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cms,
    Admin,
}

/// The caller, as established by its token (or by auth being off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is disabled: every valid room is open.
    Anonymous,
    Customer {
        id: String,
    },
    Staff {
        role: Role,
        sub: Option<String>,
    },
    Service {
        sub: Option<String>,
    },
}

impl Principal {
    /// May this caller join or read `room`?
    pub fn can_read(&self, room: &Room) -> bool {
        match self {
            Principal::Anonymous | Principal::Staff { .. } => true,
            Principal::Customer { id } => room.customer_id() == Some(id.as_str()),
            Principal::Service { .. } => false,
        }
    }

    /// May this caller `POST /api/notifications`?
    pub fn can_publish(&self) -> bool {
        matches!(self, Principal::Anonymous | Principal::Service { .. })
    }

    /// A short label for logs.
    pub fn label(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::Customer { id } => format!("customer:{id}"),
            Principal::Staff { role, sub } => format!("{role:?}:{}", sub.as_deref().unwrap_or("-")),
            Principal::Service { sub } => format!("service:{}", sub.as_deref().unwrap_or("-")),
        }
    }
}

/// Why a token was refused. Clients only ever see `unauthorized`; the detail is for logs.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Signed(i64),
    Unsigned(u64),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<Subject>,
    role: Option<String>,
    /// Already checked by jsonwebtoken (required, a number); kept for live sockets. A float
    /// `exp` is allowed by RFC 7519's NumericDate.
    exp: Option<f64>,
}

/// A token that passed every check: who it names, and when its authority ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    /// The token's `exp` (Unix seconds); `None` when auth is off (nothing expires).
    pub exp: Option<u64>,
}

#[derive(Clone)]
pub struct Authenticator {
    /// `None` when auth is disabled.
    verifier: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    #[cfg(test)]
    pub fn new(mode: &AuthMode) -> Self {
        Self::with_claims(mode, &TokenClaims::default())
    }

    /// Like [`Authenticator::new`], also requiring the `iss` / `aud` of `claims` when set.
    pub fn with_claims(mode: &AuthMode, claims: &TokenClaims) -> Self {
        let verifier = match mode {
            AuthMode::Disabled(_) => None,
            AuthMode::Required(secret) => {
                let mut validation = Validation::new(Algorithm::HS256);
                // `exp` is required (the default) and enforced to the second: an expired token
                // is refused at once rather than within a minute of leeway. The same for
                // `nbf` (not checked by default): a token is refused until it is valid.
                validation.leeway = 0;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(issuer) = &claims.issuer {
                    validation.set_issuer(&[issuer]);
                    required.push("iss");
                }
                if claims.audience.is_empty() {
                    // jsonwebtoken refuses any token with an `aud` when no audience is set;
                    // the contract leaves `aud` unchecked then.
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&claims.audience);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                Some((
                    DecodingKey::from_secret(secret.expose().as_bytes()),
                    validation,
                ))
            }
        };
        Self { verifier }
    }

    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// Establishes the caller from an optional bearer token.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        self.verify(token).map(|verified| verified.principal)
    }

    /// Establishes the caller and its token's `exp` from an optional bearer token.
    pub fn verify(&self, token: Option<&str>) -> Result<Verified, AuthError> {
        let Some((key, validation)) = &self.verifier else {
            return Ok(Verified {
                principal: Principal::Anonymous,
                exp: None,
            });
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        // Required and validated as a number above, so present; a fraction of a second is
        // dropped (the token ends at the start of that second, never later).
        let exp = claims.exp.map(|exp| exp.max(0.0).floor() as u64);
        // jsonwebtoken still accepts a token during its `exp` second; its authority ends at the
        // start of that second, as on a live socket ([`TokenExp`]).
        if exp.is_some_and(|exp| TokenExp(exp).has_passed(SystemTime::now())) {
            return Err(AuthError::Invalid("token expired".into()));
        }
        let principal = claims.principal()?;
        Ok(Verified { principal, exp })
    }
}

impl Claims {
    /// Who the claims name: `sub` and `role` (contract section 4).
    fn principal(self) -> Result<Principal, AuthError> {
        let claims = self;
        let sub = claims.sub.map(|s| match s {
            Subject::Text(s) => s,
            Subject::Signed(n) => n.to_string(),
            Subject::Unsigned(n) => n.to_string(),
        });
        match claims.role.as_deref().unwrap_or("customer") {
            "customer" => match sub {
                Some(id) if !id.is_empty() => Ok(Principal::Customer { id }),
                _ => Err(AuthError::Invalid("customer token without sub".into())),
            },
            "cms" => Ok(Principal::Staff {
                role: Role::Cms,
                sub,
            }),
            "admin" => Ok(Principal::Staff {
                role: Role::Admin,
                sub,
            }),
            "service" => Ok(Principal::Service { sub }),
            other => Err(AuthError::Invalid(format!("unknown role {other:?}"))),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// When a socket's token ends (Unix seconds), kept in the socket's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExp(pub u64);

impl TokenExp {
    /// Has the token ended at `now`? It ends at the start of its `exp` second.
    pub fn has_passed(self, now: SystemTime) -> bool {
        // Checked: an `exp` too far ahead to be a time on this system has not passed.
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.0))
            .is_some_and(|end| end <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "test-secret";

    fn auth() -> Authenticator {
        let mode = crate::config::Config::from_vars([("JWT_SECRET", SECRET)])
            .unwrap()
            .auth;
        assert!(matches!(mode, AuthMode::Required(Secret { .. })));
        Authenticator::new(&mode)
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    #[test]
    fn a_customer_reads_only_its_own_room() {
        let p = auth()
            .authenticate(Some(&token(json!({"sub": 123, "exp": in_an_hour()}))))
            .unwrap();
        assert_eq!(p, Principal::Customer { id: "123".into() });
        assert!(p.can_read(&room("customer:123")));
        assert!(!p.can_read(&room("customer:456")));
        assert!(!p.can_read(&room("cms:dashboard")));
        assert!(!p.can_publish());
    }

    #[test]
    fn cms_and_admin_read_everything_service_reads_nothing() {
        for role in ["cms", "admin"] {
            let p = auth()
                .authenticate(Some(&token(json!({"role": role, "exp": in_an_hour()}))))
                .unwrap();
            assert!(
                p.can_read(&room("cms:stations")) && p.can_read(&room("customer:9")),
                "{role}"
            );
        }
        let p = auth()
            .authenticate(Some(&token(
                json!({"role": "service", "exp": in_an_hour()}),
            )))
            .unwrap();
        assert!(!p.can_read(&room("cms:dashboard")));
        assert!(p.can_publish());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let a = auth();
        assert!(matches!(a.authenticate(None), Err(AuthError::Missing)));
        let expired = token(json!({"sub": "1", "exp": 1_000_000}));
        let no_exp = token(json!({"sub": "1"}));
        let unknown_role = token(json!({"sub": "1", "role": "root", "exp": in_an_hour()}));
        let customer_without_sub = token(json!({"exp": in_an_hour()}));
        let wrong_key = encode(
            &Header::default(),
            &json!({"sub": "1", "exp": in_an_hour()}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        for bad in [
            expired,
            no_exp,
            unknown_role,
            customer_without_sub,
            wrong_key,
            "garbage".into(),
        ] {
            assert!(
                matches!(a.authenticate(Some(&bad)), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
    }

    fn auth_with(vars: &[(&str, &str)]) -> Authenticator {
        let config =
            crate::config::Config::from_vars([("JWT_SECRET", SECRET)].iter().chain(vars).copied())
                .unwrap();
        Authenticator::with_claims(&config.auth, &config.token_claims)
    }

    #[test]
    fn a_verified_token_keeps_its_exp() {
        let exp = in_an_hour();
        let verified = auth()
            .verify(Some(&token(json!({"sub": "7", "exp": exp}))))
            .unwrap();
        assert_eq!(verified.exp, Some(exp));
        let fractional = auth()
            .verify(Some(&token(json!({"sub": "7", "exp": exp as f64 + 0.75}))))
            .unwrap();
        assert_eq!(fractional.exp, Some(exp));
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let a = auth();
        let later = token(json!({"sub": "1", "exp": in_an_hour(), "nbf": in_an_hour() - 1800}));
        let ending_now = token(json!({"sub": "1", "exp": in_an_hour() - 3600}));
        assert!(
            a.authenticate(Some(&ending_now)).is_err(),
            "exp is exclusive"
        );
        assert!(matches!(
            a.authenticate(Some(&later)),
            Err(AuthError::Invalid(_))
        ));
        let now = token(json!({"sub": "1", "exp": in_an_hour(), "nbf": in_an_hour() - 3600}));
        assert!(a.authenticate(Some(&now)).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_enforced_only_when_set() {
        let claims = |extra: serde_json::Value| {
            let mut c = json!({"sub": "1", "exp": in_an_hour()});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            token(c)
        };
        let unset = auth();
        for any in [
            json!({}),
            json!({"iss": "x", "aud": "y"}),
            json!({"aud": ["a", "b"]}),
        ] {
            assert!(
                unset.authenticate(Some(&claims(any.clone()))).is_ok(),
                "{any}"
            );
        }
        let strict = auth_with(&[("JWT_ISSUER", "idp"), ("JWT_AUDIENCE", "cms,app")]);
        for good in [
            json!({"iss": "idp", "aud": "app"}),
            json!({"iss": "idp", "aud": ["other", "cms"]}),
        ] {
            assert!(
                strict.authenticate(Some(&claims(good.clone()))).is_ok(),
                "{good}"
            );
        }
        for bad in [
            json!({}),
            json!({"iss": "idp"}),
            json!({"aud": "app"}),
            json!({"iss": "other", "aud": "app"}),
            json!({"iss": "idp", "aud": "other"}),
            json!({"iss": "idp", "aud": ["x", "y"]}),
        ] {
            assert!(
                matches!(
                    strict.authenticate(Some(&claims(bad.clone()))),
                    Err(AuthError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn disabled_auth_opens_every_room() {
        let a = Authenticator::new(&AuthMode::Disabled("test"));
        let p = a.authenticate(None).unwrap();
        assert!(p.can_read(&room("customer:1")) && p.can_read(&room("cms:x")) && p.can_publish());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(None), None);
    }
}
