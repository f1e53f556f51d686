//! Click IDs: unguessable, self-verifying, self-describing.
//!
//! Layout (36 bytes, base64url without padding = exactly 48 characters):
//!
//! ```text
//! [key id: 1][click time, Unix ms: 6][offer id: 3][affiliate id: 3][random: 16][MAC: 7]
//! ```
//!
//! * 128 bits from the OS-seeded CSPRNG make the ID unguessable.
//! * The MAC is HMAC-SHA256 over the first 29 bytes, truncated to 56 bits, keyed by the
//!   key named in byte 0, so a gateway verifies an ID without a database read and keys can
//!   rotate (old keys stay in the key ring for verification only). Forging one ID takes on
//!   the order of 2^55 online guesses.
//! * Offer, affiliate and click time are inside, so a conversion can be attributed even if
//!   the click row was never written (clicks are group-committed; see the README).
//!
//! Offer and affiliate ids are the database's numeric ids and must fit in 24 bits
//! (16 777 215); [`ClickKeyRing::issue`] refuses larger ones rather than truncating.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const RAW_LEN: usize = 36;
const SIGNED_LEN: usize = 29;
const MAC_LEN: usize = RAW_LEN - SIGNED_LEN;
/// Length of every click ID in characters.
pub const CLICK_ID_LEN: usize = 48;
/// Largest offer or affiliate id a click ID can carry.
pub const MAX_EMBEDDED_ID: i64 = (1 << 24) - 1;
/// Shortest accepted click-ID key, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// A click ID whose MAC has been verified, with the claims it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickId {
    text: String,
    claims: ClickClaims,
}

/// What a verified click ID says about its click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickClaims {
    pub key_id: u8,
    pub clicked_at: DateTime<Utc>,
    pub offer_id: i64,
    pub affiliate_id: i64,
}

impl ClickId {
    /// The 48-character URL-safe form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn claims(&self) -> &ClickClaims {
        &self.claims
    }
}

impl std::fmt::Display for ClickId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a string is not a click ID this gateway issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClickIdError {
    /// Wrong length or alphabet: a typo, truncation or a foreign ID.
    #[error("click ID must be {CLICK_ID_LEN} URL-safe base64 characters")]
    Malformed,
    /// Well-formed but not signed by any key we hold.
    #[error("click ID signature does not verify")]
    Forged,
}

/// Why a click ID could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{what} id {id} does not fit in a click ID (max {MAX_EMBEDDED_ID})")]
    IdTooLarge { what: &'static str, id: i64 },
    #[error("click time {0} is outside the click-ID range")]
    TimeOutOfRange(DateTime<Utc>),
}

/// Why a key ring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("click-ID key {id} is {len} bytes; at least {MIN_KEY_LEN} are required")]
    KeyTooShort { id: u8, len: usize },
    #[error("active click-ID key {0} is not in the key ring")]
    UnknownActiveKey(u8),
}

/// The keys click IDs are signed with: one active key for new IDs, all for verification.
#[derive(Clone)]
pub struct ClickKeyRing {
    active: u8,
    keys: HashMap<u8, HmacSha256>,
}

impl std::fmt::Debug for ClickKeyRing {
    // Keys are secrets: show only their ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("ClickKeyRing")
            .field("active", &self.active)
            .field("key_ids", &ids)
            .finish()
    }
}

impl ClickKeyRing {
    pub fn new(
        active: u8,
        keys: impl IntoIterator<Item = (u8, Vec<u8>)>,
    ) -> Result<Self, KeyRingError> {
        let mut ring = HashMap::new();
        for (id, secret) in keys {
            if secret.len() < MIN_KEY_LEN {
                return Err(KeyRingError::KeyTooShort {
                    id,
                    len: secret.len(),
                });
            }
            // HMAC accepts keys of any length, so this cannot fail.
            let mac =
                HmacSha256::new_from_slice(&secret).map_err(|_| KeyRingError::KeyTooShort {
                    id,
                    len: secret.len(),
                })?;
            ring.insert(id, mac);
        }
        if !ring.contains_key(&active) {
            return Err(KeyRingError::UnknownActiveKey(active));
        }
        Ok(Self { active, keys: ring })
    }

    /// Mints a new click ID for a click on `offer_id` by `affiliate_id` at `clicked_at`.
    pub fn issue(
        &self,
        offer_id: i64,
        affiliate_id: i64,
        clicked_at: DateTime<Utc>,
    ) -> Result<ClickId, IssueError> {
        let offer = embedded_id("offer", offer_id)?;
        let affiliate = embedded_id("affiliate", affiliate_id)?;
        let millis = u64::try_from(clicked_at.timestamp_millis())
            .ok()
            .filter(|ms| *ms < (1 << 48))
            .ok_or(IssueError::TimeOutOfRange(clicked_at))?;

        let mut raw = [0u8; RAW_LEN];
        raw[0] = self.active;
        raw[1..7].copy_from_slice(&millis.to_be_bytes()[2..]);
        raw[7..10].copy_from_slice(&offer.to_be_bytes()[1..]);
        raw[10..13].copy_from_slice(&affiliate.to_be_bytes()[1..]);
        rand::fill(&mut raw[13..29]);
        let tag = self.tag(self.active, &raw[..SIGNED_LEN]);
        raw[SIGNED_LEN..].copy_from_slice(&tag[..MAC_LEN]);

        Ok(ClickId {
            text: URL_SAFE_NO_PAD.encode(raw),
            claims: ClickClaims {
                key_id: self.active,
                clicked_at: DateTime::from_timestamp_millis(millis as i64).unwrap_or(clicked_at),
                offer_id,
                affiliate_id,
            },
        })
    }

    /// Parses and verifies a click ID; no database read.
    pub fn verify(&self, text: &str) -> Result<ClickId, ClickIdError> {
        if text.len() != CLICK_ID_LEN {
            return Err(ClickIdError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(text.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(ClickIdError::Malformed),
        }
        let key_id = raw[0];
        if !self.keys.contains_key(&key_id) {
            return Err(ClickIdError::Forged);
        }
        let tag = self.tag(key_id, &raw[..SIGNED_LEN]);
        if !bool::from(tag[..MAC_LEN].ct_eq(&raw[SIGNED_LEN..])) {
            return Err(ClickIdError::Forged);
        }
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&raw[1..7]);
        let mut offer = [0u8; 4];
        offer[1..].copy_from_slice(&raw[7..10]);
        let mut affiliate = [0u8; 4];
        affiliate[1..].copy_from_slice(&raw[10..13]);
        let clicked_at = DateTime::from_timestamp_millis(u64::from_be_bytes(millis) as i64)
            .ok_or(ClickIdError::Malformed)?;
        Ok(ClickId {
            text: text.to_owned(),
            claims: ClickClaims {
                key_id,
                clicked_at,
                offer_id: i64::from(u32::from_be_bytes(offer)),
                affiliate_id: i64::from(u32::from_be_bytes(affiliate)),
            },
        })
    }

    fn tag(&self, key_id: u8, signed: &[u8]) -> [u8; 32] {
        // Callers check the key id first; an absent key yields an all-zero tag that
        // matches nothing a real key produced.
        let Some(mac) = self.keys.get(&key_id) else {
            return [0; 32];
        };
        let mut mac = mac.clone();
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }
}

fn embedded_id(what: &'static str, id: i64) -> Result<u32, IssueError> {
    u32::try_from(id)
        .ok()
        .filter(|v| i64::from(*v) <= MAX_EMBEDDED_ID)
        .ok_or(IssueError::IdTooLarge { what, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(active: u8) -> ClickKeyRing {
        ClickKeyRing::new(active, [(1, vec![7u8; 32]), (2, vec![9u8; 40])]).expect("valid ring")
    }

    #[test]
    fn issued_ids_are_48_url_safe_chars_and_verify_with_their_claims() {
        let now = DateTime::from_timestamp_millis(1_764_000_000_123).expect("time");
        let id = ring(1).issue(42, 7, now).expect("issue");
        assert_eq!(id.as_str().len(), CLICK_ID_LEN);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let parsed = ring(2)
            .verify(id.as_str())
            .expect("verifies with old key in ring");
        assert_eq!(parsed.claims().offer_id, 42);
        assert_eq!(parsed.claims().affiliate_id, 7);
        assert_eq!(parsed.claims().clicked_at, now);
        assert_eq!(parsed.claims().key_id, 1);
    }

    #[test]
    fn two_clicks_at_the_same_instant_get_different_ids() {
        let now = Utc::now();
        let a = ring(1).issue(1, 1, now).expect("issue");
        let b = ring(1).issue(1, 1, now).expect("issue");
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn any_flipped_character_is_detected() {
        let id = ring(1).issue(3, 4, Utc::now()).expect("issue");
        for i in 0..CLICK_ID_LEN {
            let mut chars: Vec<char> = id.as_str().chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let tampered: String = chars.into_iter().collect();
            assert!(ring(1).verify(&tampered).is_err(), "position {i}");
        }
    }

    #[test]
    fn truncated_padded_or_foreign_ids_are_malformed() {
        let id = ring(1).issue(3, 4, Utc::now()).expect("issue");
        assert_eq!(
            ring(1).verify(&id.as_str()[..47]),
            Err(ClickIdError::Malformed)
        );
        assert_eq!(ring(1).verify(""), Err(ClickIdError::Malformed));
        assert_eq!(
            ring(1).verify(&format!("{}=", &id.as_str()[..47])),
            Err(ClickIdError::Malformed)
        );
        assert_eq!(
            ring(1).verify(&"é".repeat(24)),
            Err(ClickIdError::Malformed)
        );
    }

    #[test]
    fn ids_signed_with_an_unknown_key_are_forged() {
        let other = ClickKeyRing::new(1, [(1, vec![8u8; 32])]).expect("ring");
        let id = other.issue(3, 4, Utc::now()).expect("issue");
        assert_eq!(ring(1).verify(id.as_str()), Err(ClickIdError::Forged));
        let unknown_kid = ClickKeyRing::new(5, [(5, vec![7u8; 32])]).expect("ring");
        let id = unknown_kid.issue(3, 4, Utc::now()).expect("issue");
        assert_eq!(ring(1).verify(id.as_str()), Err(ClickIdError::Forged));
    }

    #[test]
    fn short_keys_and_oversized_ids_are_refused() {
        assert!(ClickKeyRing::new(1, [(1, vec![1u8; 31])]).is_err());
        assert!(ClickKeyRing::new(2, [(1, vec![1u8; 32])]).is_err());
        assert!(ring(1).issue(MAX_EMBEDDED_ID + 1, 1, Utc::now()).is_err());
        assert!(ring(1).issue(1, -1, Utc::now()).is_err());
    }
}
