//! Standard Webhooks signing (symmetric `v1`, HMAC-SHA256) for POST postbacks.
//!
//! Contract
//! - Input: per-endpoint secrets (`whsec_<base64>`; one, or two while rotating), the delivery's
//!   stable message id, the attempt's timestamp, and the exact body bytes that will be sent.
//! - Output: [`SignedHeaders`] — `webhook-id`, `webhook-timestamp`, `webhook-signature`
//!   (`v1,<sig>` per active key, space-separated). [`verify`] checks a header (for the test
//!   receiver and for affiliates' reference).
//! - Errors: [`SigningError`] when a secret does not parse (at config load, never at send time).
//! - Side effects: none.
//!
//! Signed content is `{id}.{timestamp}.{body}`; the id is stable across retries so receivers
//! can deduplicate, while the timestamp is per attempt so their replay window keeps working.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Secrets are accepted with or without `=` padding and with non-zero trailing bits, as the
/// reference libraries (Python's b64decode) accept them; the fixture has such secrets.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Errors parsing signing configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("webhook secret is not valid base64 (after the optional whsec_ prefix)")]
    BadBase64,
    #[error("webhook secret is empty")]
    Empty,
    #[error("an endpoint needs one or two active signing secrets, got {0}")]
    KeyCount(usize),
}

/// One symmetric secret. Debug never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (prefix optional, padding optional).
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
        let key = LENIENT.decode(b64).map_err(|_| SigningError::BadBase64)?;
        if key.is_empty() {
            return Err(SigningError::Empty);
        }
        Ok(Self(key))
    }

    fn signature(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        feed(&mut mac, msg_id, timestamp, body);
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail, but avoid unwrap on principle.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => HmacSha256::new(&Default::default()),
        }
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

fn feed(mac: &mut HmacSha256, msg_id: &str, timestamp: i64, body: &[u8]) {
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// The active secrets of one endpoint: the current one, plus the next one during rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys(Vec<WebhookSecret>);

impl SigningKeys {
    pub fn new(keys: Vec<WebhookSecret>) -> Result<Self, SigningError> {
        match keys.len() {
            1 | 2 => Ok(Self(keys)),
            n => Err(SigningError::KeyCount(n)),
        }
    }

    /// Parses one or two `whsec_` strings.
    pub fn parse<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Self, SigningError> {
        Self::new(
            secrets
                .into_iter()
                .map(WebhookSecret::parse)
                .collect::<Result<_, _>>()?,
        )
    }

    /// Signs one attempt.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
        let signature = self
            .0
            .iter()
            .map(|k| {
                format!(
                    "v1,{}",
                    STANDARD.encode(k.signature(msg_id, timestamp, body))
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        SignedHeaders {
            id: msg_id.to_owned(),
            timestamp: timestamp.to_string(),
            signature,
        }
    }
}

/// The three Standard Webhooks headers of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl SignedHeaders {
    /// Header name/value pairs in the spec's lower-case spelling.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("webhook-id", &self.id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
        ]
    }
}

/// The stable `webhook-id` of a delivery: the same on every retry of it.
pub fn webhook_id(delivery_id: &str) -> String {
    format!("msg_{delivery_id}")
}

/// Verifies a `webhook-signature` header: true if any `v1,` entry matches (constant-time
/// comparison). Timestamp tolerance is the caller's business (needs a clock).
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
) -> bool {
    signature_header.split(' ').any(|entry| {
        let Some(sig_b64) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = general_purpose::STANDARD.decode(sig_b64) else {
            return false;
        };
        let mut mac = secret.mac();
        feed(&mut mac, msg_id, timestamp, body);
        mac.verify_slice(&sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn secrets_parse_with_or_without_prefix_and_padding_and_never_print() {
        let a = WebhookSecret::parse(SECRET).expect("test value");
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("test value"),
            a
        );
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
        assert_eq!(
            WebhookSecret::parse("whsec_!!!"),
            Err(SigningError::BadBase64)
        );
        assert_eq!(WebhookSecret::parse("whsec_"), Err(SigningError::Empty));
    }

    #[test]
    fn an_endpoint_has_one_or_two_keys() {
        assert_eq!(SigningKeys::parse([]), Err(SigningError::KeyCount(0)));
        assert_eq!(
            SigningKeys::parse([SECRET, SECRET, SECRET]),
            Err(SigningError::KeyCount(3))
        );
    }

    #[test]
    fn during_rotation_both_keys_sign_and_each_verifies_its_own_entry() {
        let old = WebhookSecret::parse(SECRET).expect("test value");
        let new =
            WebhookSecret::parse("whsec_c2Vjb25kLWtleS1mb3Itcm90YXRpb24=").expect("test value");
        let keys = SigningKeys::new(vec![old.clone(), new.clone()]).expect("test value");
        let h = keys.sign("msg_1", 1_700_000_000, b"{}");
        let entries: Vec<&str> = h.signature.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.starts_with("v1,")));
        assert_ne!(entries[0], entries[1]);
        assert!(verify(&old, "msg_1", 1_700_000_000, b"{}", &h.signature));
        assert!(verify(&new, "msg_1", 1_700_000_000, b"{}", &h.signature));
        assert!(!verify(&new, "msg_1", 1_700_000_001, b"{}", &h.signature));
        assert!(!verify(&new, "msg_2", 1_700_000_000, b"{}", &h.signature));
    }

    #[test]
    fn the_webhook_id_is_stable_for_a_delivery() {
        assert_eq!(webhook_id("42"), webhook_id("42"));
        assert_eq!(webhook_id("42"), "msg_42");
    }
}
