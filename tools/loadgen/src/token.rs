//! HS256 tokens the daemon accepts (contract section 4): `customer` with `sub`, `cms`.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::tally::unix_micros;

/// Long enough for any run, short enough not to be a standing credential.
const LIFETIME_SECS: u64 = 6 * 3600;

pub struct Tokens {
    key: Option<EncodingKey>,
}

impl Tokens {
    /// Without a secret the daemon must be in dev mode (auth off): no token is sent.
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            key: secret.map(|s| EncodingKey::from_secret(s.as_bytes())),
        }
    }

    pub fn customer(&self, id: u32) -> Option<String> {
        self.mint(json!({ "sub": id, "role": "customer" }))
    }

    pub fn cms(&self, n: u32) -> Option<String> {
        self.mint(json!({ "sub": format!("loadgen-cms-{n}"), "role": "cms" }))
    }

    fn mint(&self, mut claims: Value) -> Option<String> {
        let key = self.key.as_ref()?;
        claims["exp"] = json!(unix_micros() / 1_000_000 + LIFETIME_SECS);
        // Encoding plain JSON claims with an HMAC key cannot fail.
        Some(encode(&Header::default(), &claims, key).expect("HS256 encoding"))
    }
}
