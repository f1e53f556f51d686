//! The catalog: advertisers, affiliates, offers and goals.
//!
//! They live in the database; the configuration file may declare them and they are upserted
//! at start-up ([`upsert_from_settings`]). The hot paths (click, postback) never query them:
//! they read an immutable [`Catalog`] snapshot loaded by [`load`] and swapped atomically when
//! the catalog changes.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::Utc;
use ipnet::IpNet;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Conn, StoreError};
use crate::config::{AmountRule, LagAction, OfferStatus, Settings};
use crate::domain::Currency;

#[derive(Debug, Clone)]
pub struct Advertiser {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub token_sha256: [u8; 32],
    pub allow_networks: Vec<IpNet>,
    pub aliases: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Affiliate {
    pub id: i64,
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Offer {
    pub id: i64,
    pub key: String,
    pub name: String,
    pub advertiser_id: i64,
    pub landing_url: String,
    pub fallback_url: Option<String>,
    pub status: OfferStatus,
    pub currency: Currency,
    pub default_goal: String,
    pub min_lag_seconds: i64,
    pub lag_action: LagAction,
    pub window_seconds: i64,
    pub goals: HashMap<String, Goal>,
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub name: String,
    pub payout: AmountRule,
    pub revenue: AmountRule,
    pub allow_repeats: bool,
}

/// An immutable snapshot of everything attribution reads.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub network_currency: Currency,
    pub fx_rates: HashMap<Currency, Decimal>,
    advertisers: HashMap<i64, Advertiser>,
    advertiser_by_token: HashMap<[u8; 32], i64>,
    affiliates: HashMap<i64, Affiliate>,
    affiliate_by_key: HashMap<String, i64>,
    offers: HashMap<i64, Offer>,
    offer_by_key: HashMap<String, i64>,
    /// Affiliate key → outbound postback rules (from the configuration, set at start-up).
    pub postbacks: std::sync::Arc<HashMap<String, crate::outbound::AffiliatePostbacks>>,
}

impl Catalog {
    pub fn advertiser(&self, id: i64) -> Option<&Advertiser> {
        self.advertisers.get(&id)
    }

    pub fn advertiser_by_key(&self, key: &str) -> Option<&Advertiser> {
        self.advertisers.values().find(|a| a.key == key)
    }

    /// Finds the advertiser a postback token belongs to. The lookup is by SHA-256 digest,
    /// and the digest is then compared in constant time, so timing reveals nothing about
    /// how much of a wrong token matched.
    pub fn advertiser_by_token(&self, token: &str) -> Option<&Advertiser> {
        use subtle::ConstantTimeEq;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let id = self.advertiser_by_token.get(&digest)?;
        let adv = self.advertisers.get(id)?;
        bool::from(adv.token_sha256.ct_eq(&digest)).then_some(adv)
    }

    /// Every parameter name any advertiser sends its token under.
    pub fn token_param_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once("token").chain(
            self.advertisers
                .values()
                .filter_map(|a| a.aliases.get("token"))
                .flatten()
                .map(String::as_str),
        )
    }

    pub fn affiliate(&self, id: i64) -> Option<&Affiliate> {
        self.affiliates.get(&id)
    }

    pub fn affiliate_by_key(&self, key: &str) -> Option<&Affiliate> {
        self.affiliate_by_key
            .get(key)
            .and_then(|id| self.affiliates.get(id))
    }

    pub fn offer(&self, id: i64) -> Option<&Offer> {
        self.offers.get(&id)
    }

    /// Ids of the advertiser's offers.
    pub fn offers_of(&self, advertiser_id: i64) -> impl Iterator<Item = i64> + '_ {
        self.offers
            .values()
            .filter(move |o| o.advertiser_id == advertiser_id)
            .map(|o| o.id)
    }

    pub fn offer_by_key(&self, key: &str) -> Option<&Offer> {
        self.offer_by_key
            .get(key)
            .and_then(|id| self.offers.get(id))
    }

    /// Units of the network currency per unit of `currency`, if we convert it.
    pub fn fx_rate(&self, currency: Currency) -> Option<Decimal> {
        self.fx_rates.get(&currency).copied()
    }
}

/// Writes the advertisers, affiliates, offers and goals declared in the configuration.
pub async fn upsert_from_settings(
    conn: &mut Conn<'_>,
    settings: &Settings,
) -> Result<(), StoreError> {
    crate::db!(conn, conn => {
        let now = Utc::now().timestamp_millis();
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        for a in &settings.advertisers {
            let digest = hex::encode(Sha256::digest(a.token.as_bytes()));
            let nets: Vec<String> = a.allow_networks.iter().map(ToString::to_string).collect();
            sqlx::query(
                "INSERT INTO advertisers (key, name, token_sha256, allow_ips, aliases, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name,
                    token_sha256 = excluded.token_sha256, allow_ips = excluded.allow_ips,
                    aliases = excluded.aliases, updated_at = excluded.updated_at",
            )
            .bind(&a.key)
            .bind(&a.name)
            .bind(digest)
            .bind(serde_json::to_string(&nets)?)
            .bind(serde_json::to_string(&a.aliases)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for a in &settings.affiliates {
            sqlx::query(
                "INSERT INTO affiliates (key, name, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
            )
            .bind(&a.key)
            .bind(&a.name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for o in &settings.offers {
            let offer_id: i64 = sqlx::query_scalar(
                "INSERT INTO offers (key, name, advertiser_id, landing_url, fallback_url, status,
                    currency, default_goal, min_lag_seconds, lag_action, window_seconds, updated_at)
                 VALUES ($1, $2, (SELECT id FROM advertisers WHERE key = $3), $4, $5, $6, $7, $8, $9,
                    $10, $11, $12)
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name,
                    advertiser_id = excluded.advertiser_id, landing_url = excluded.landing_url,
                    fallback_url = excluded.fallback_url, status = excluded.status,
                    currency = excluded.currency, default_goal = excluded.default_goal,
                    min_lag_seconds = excluded.min_lag_seconds, lag_action = excluded.lag_action,
                    window_seconds = excluded.window_seconds, updated_at = excluded.updated_at
                 RETURNING id",
            )
            .bind(&o.key)
            .bind(&o.name)
            .bind(&o.advertiser)
            .bind(&o.landing_url)
            .bind(&o.fallback_url)
            .bind(o.status.as_str())
            .bind(o.currency.code())
            .bind(&o.default_goal)
            .bind(o.min_lag_seconds)
            .bind(o.lag_action.as_str())
            .bind(o.window_seconds)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for g in &o.goals {
                let (pk, pv) = g.payout.to_parts();
                let (rk, rv) = g.revenue.to_parts();
                sqlx::query(
                    "INSERT INTO goals (offer_id, name, payout_kind, payout_value, revenue_kind,
                        revenue_value, allow_repeats)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (offer_id, name) DO UPDATE SET payout_kind = excluded.payout_kind,
                        payout_value = excluded.payout_value, revenue_kind = excluded.revenue_kind,
                        revenue_value = excluded.revenue_value, allow_repeats = excluded.allow_repeats",
                )
                .bind(offer_id)
                .bind(&g.name)
                .bind(pk)
                .bind(pv)
                .bind(rk)
                .bind(rv)
                .bind(g.allow_repeats)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    })
}

/// Reads the whole catalog into a snapshot.
pub async fn load(
    conn: &mut Conn<'_>,
    network_currency: Currency,
    fx_rates: HashMap<Currency, Decimal>,
) -> Result<Catalog, StoreError> {
    crate::db!(conn, conn => {
        let corrupt = |what: String| StoreError::Corrupt(what);

        let mut advertisers = HashMap::new();
        let mut advertiser_by_token = HashMap::new();
        for row in
            sqlx::query("SELECT id, key, name, token_sha256, allow_ips, aliases FROM advertisers")
                .fetch_all(&mut **conn)
                .await?
        {
            let id: i64 = row.try_get("id")?;
            let key: String = row.try_get("key")?;
            let digest_hex: String = row.try_get("token_sha256")?;
            let token_sha256 = unhex32(&digest_hex)
                .ok_or_else(|| corrupt(format!("advertiser {key}: token digest")))?;
            let nets: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("allow_ips")?)?;
            let allow_networks = nets
                .iter()
                .map(|n| IpNet::from_str(n))
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt(format!("advertiser {key}: allow_ips")))?;
            let aliases = serde_json::from_str(&row.try_get::<String, _>("aliases")?)?;
            advertiser_by_token.insert(token_sha256, id);
            advertisers.insert(
                id,
                Advertiser {
                    id,
                    name: row.try_get("name")?,
                    key,
                    token_sha256,
                    allow_networks,
                    aliases,
                },
            );
        }

        let mut affiliates = HashMap::new();
        let mut affiliate_by_key = HashMap::new();
        for row in sqlx::query("SELECT id, key, name FROM affiliates")
            .fetch_all(&mut **conn)
            .await?
        {
            let a = Affiliate {
                id: row.try_get("id")?,
                key: row.try_get("key")?,
                name: row.try_get("name")?,
            };
            affiliate_by_key.insert(a.key.clone(), a.id);
            affiliates.insert(a.id, a);
        }

        let mut goals_by_offer: HashMap<i64, HashMap<String, Goal>> = HashMap::new();
        let goal_rows = sqlx::query(
            "SELECT g.offer_id, g.name, g.payout_kind, g.payout_value, g.revenue_kind,
                    g.revenue_value, g.allow_repeats, o.currency
             FROM goals g JOIN offers o ON o.id = g.offer_id",
        )
        .fetch_all(&mut **conn)
        .await?;
        for row in goal_rows {
            let offer_id: i64 = row.try_get("offer_id")?;
            let name: String = row.try_get("name")?;
            let currency = Currency::parse(&row.try_get::<String, _>("currency")?)
                .map_err(|e| corrupt(format!("offer {offer_id}: {e}")))?;
            let rule = |kind: &str, value: &str| {
                AmountRule::from_parts(kind, value, currency)
                    .map_err(|e| corrupt(format!("goal {offer_id}/{name}: {e}")))
            };
            let goal = Goal {
                payout: rule(
                    &row.try_get::<String, _>("payout_kind")?,
                    &row.try_get::<String, _>("payout_value")?,
                )?,
                revenue: rule(
                    &row.try_get::<String, _>("revenue_kind")?,
                    &row.try_get::<String, _>("revenue_value")?,
                )?,
                allow_repeats: row.try_get("allow_repeats")?,
                name: name.clone(),
            };
            goals_by_offer
                .entry(offer_id)
                .or_default()
                .insert(name, goal);
        }

        let mut offers = HashMap::new();
        let mut offer_by_key = HashMap::new();
        for row in sqlx::query(
            "SELECT id, key, name, advertiser_id, landing_url, fallback_url, status, currency,
                    default_goal, min_lag_seconds, lag_action, window_seconds FROM offers",
        )
        .fetch_all(&mut **conn)
        .await?
        {
            let id: i64 = row.try_get("id")?;
            let key: String = row.try_get("key")?;
            let status: String = row.try_get("status")?;
            let lag: String = row.try_get("lag_action")?;
            let offer = Offer {
                id,
                name: row.try_get("name")?,
                advertiser_id: row.try_get("advertiser_id")?,
                landing_url: row.try_get("landing_url")?,
                fallback_url: row.try_get("fallback_url")?,
                status: OfferStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("offer {key}: status {status}")))?,
                currency: Currency::parse(&row.try_get::<String, _>("currency")?)
                    .map_err(|e| corrupt(format!("offer {key}: {e}")))?,
                default_goal: row.try_get("default_goal")?,
                min_lag_seconds: row.try_get("min_lag_seconds")?,
                lag_action: LagAction::parse(&lag)
                    .ok_or_else(|| corrupt(format!("offer {key}: lag_action {lag}")))?,
                window_seconds: row.try_get("window_seconds")?,
                goals: goals_by_offer.remove(&id).unwrap_or_default(),
                key: key.clone(),
            };
            offer_by_key.insert(key, id);
            offers.insert(id, offer);
        }

        Ok(Catalog {
            network_currency,
            fx_rates,
            advertisers,
            advertiser_by_token,
            affiliates,
            affiliate_by_key,
            offers,
            offer_by_key,
            postbacks: Default::default(),
        })
    })
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}
