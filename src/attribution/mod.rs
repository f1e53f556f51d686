//! Attribution: from a canonical postback to a [`Decision`].
//!
//! Input: an authenticated advertiser, a [`CanonicalPostback`], the click-ID key ring and the
//! catalog snapshot. Output: a [`Decision`] (accepted or rejected with reasons, amounts in
//! the network currency, payout and revenue, dedupe keys), or an [`InputError`] when the
//! request itself is malformed (answered 4xx, nothing recorded). [`evaluate`] is pure: it
//! runs on the request's task, in parallel, without touching the database. What needs the
//! database — duplicates, status transitions, the ledger — happens in [`apply`], inside the
//! writer's transaction.

pub mod apply;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::config::{AmountRule, LagAction};
use crate::domain::{
    AmountError, CanonicalPostback, ClickIdError, ClickKeyRing, Currency, Money, Reason,
    ReasonCode, Status,
};
use crate::store::catalog::{Advertiser, Catalog};

/// Rejections that depend on when the conversion came, not on what it said.
pub const TIME_RULES: [ReasonCode; 3] = [
    ReasonCode::ClickExpired,
    ReasonCode::LagTooShort,
    ReasonCode::ClickInFuture,
];

/// Clicks may claim a time slightly ahead of ours (another gateway's clock).
const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// The request cannot be judged at all: answered 400 with this reason, nothing stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("invalid amount: {0}")]
    Amount(#[from] AmountError),
}

impl InputError {
    pub fn code(&self) -> ReasonCode {
        ReasonCode::InvalidAmount
    }
}

/// Converted amounts of an accepted conversion, all exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amounts {
    /// As reported, in the reported currency.
    pub amount: Money,
    /// Network-currency units per unit of `amount.currency`.
    pub fx_rate: Decimal,
    pub network_amount: Money,
    /// Owed to the affiliate, network currency.
    pub payout: Money,
    /// Billed to the advertiser, network currency.
    pub revenue: Money,
}

/// Attribution's verdict on one conversion, before duplicates are known.
#[derive(Debug, Clone)]
pub struct Decision {
    pub conversion_id: String,
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub source_event_id: Option<String>,
    pub advertiser_id: i64,
    pub advertiser_key: String,
    pub offer_id: Option<i64>,
    pub affiliate_id: Option<i64>,
    pub affiliate_key: Option<String>,
    pub goal: Option<String>,
    pub click_id: Option<String>,
    pub clicked_at: Option<DateTime<Utc>>,
    pub transaction_id: Option<String>,
    pub status: Status,
    /// Non-empty means the conversion is recorded as rejected.
    pub rejections: Vec<Reason>,
    /// Accepted, but marked for review (e.g. a short lag on a "flag" offer).
    pub flags: Vec<Reason>,
    pub amounts: Option<Amounts>,
    /// Whether the source sent an amount (a status update often does not).
    pub amount_reported: bool,
    pub occurred_at: Option<DateTime<Utc>>,
    pub attributes: BTreeMap<String, String>,
    /// `offer_id:transaction_id`: one conversion per transaction per offer.
    pub txn_key: Option<String>,
    /// `click_id:goal`: one conversion per click and goal, unless the goal repeats.
    pub click_goal_key: Option<String>,
    /// `source:source_event_id:n`: a redelivered webhook event is a duplicate.
    pub event_key: Option<String>,
    /// The raw webhook request this came from, if any.
    pub raw_request_id: Option<String>,
    /// For an update without a click ID: the `txn_key`s it may refer to (one per offer of
    /// the advertiser). Such a decision never creates a conversion; it only updates one.
    pub txn_candidates: Vec<String>,
    /// Outbound endpoints subscribed to this conversion's affiliate, offer, goal and status:
    /// the writer enqueues a delivery to each if the conversion is recorded as accepted.
    pub postbacks: Vec<String>,
    /// The postback rules of the catalog this was judged with. A status change is announced
    /// to the endpoints these select for the stored row (an update by transaction ID alone
    /// does not know its affiliate until the row is found).
    pub postback_rules:
        std::sync::Arc<std::collections::HashMap<String, crate::outbound::AffiliatePostbacks>>,
}

impl Decision {
    pub fn is_rejected(&self) -> bool {
        !self.rejections.is_empty()
    }

    /// An update by transaction only (no click): it can change a conversion, not create one.
    pub fn is_update_only(&self) -> bool {
        !self.is_rejected() && self.click_id.is_none() && !self.txn_candidates.is_empty()
    }

    /// Whether the recorded row claims the dedupe keys. A rejection for something the
    /// operator or advertiser can fix (unknown goal, missing FX rate) must not block the
    /// retry; a rejection for timing must, or a retry a second later would slip past the
    /// lag check.
    pub fn holds_dedupe_keys(&self) -> bool {
        self.rejections.iter().all(|r| TIME_RULES.contains(&r.code))
    }

    fn reject(&mut self, code: ReasonCode, message: impl Into<String>) {
        self.rejections.push(Reason::new(code, message));
    }
}

/// Judges one postback against its click, offer and goal. Pure; see the module docs.
pub fn evaluate(
    catalog: &Catalog,
    keys: &ClickKeyRing,
    advertiser: &Advertiser,
    postback: CanonicalPostback,
    now: DateTime<Utc>,
) -> Result<Decision, InputError> {
    let mut d = Decision {
        conversion_id: uuid::Uuid::now_v7().to_string(),
        received_at: now,
        source: postback.source,
        source_event_id: postback.source_event_id,
        advertiser_id: advertiser.id,
        advertiser_key: advertiser.key.clone(),
        offer_id: None,
        affiliate_id: None,
        affiliate_key: None,
        goal: postback.event.clone(),
        click_id: postback.click_id.clone(),
        clicked_at: None,
        transaction_id: postback.transaction_id.filter(|t| !t.is_empty()),
        status: postback.status,
        rejections: Vec::new(),
        flags: Vec::new(),
        amounts: None,
        amount_reported: postback.amount.is_some(),
        occurred_at: postback.occurred_at,
        attributes: postback.attributes,
        txn_key: None,
        click_goal_key: None,
        event_key: None,
        raw_request_id: None,
        txn_candidates: Vec::new(),
        postbacks: Vec::new(),
        postback_rules: catalog.postbacks.clone(),
    };

    let Some(click_text) = postback.click_id.as_deref().filter(|c| !c.is_empty()) else {
        // Refunds and status changes often carry the order but not the click: find the
        // conversion by transaction among this advertiser's offers.
        d.click_id = None;
        match &d.transaction_id {
            Some(txn) => {
                d.txn_candidates = catalog
                    .offers_of(advertiser.id)
                    .map(|offer_id| format!("{offer_id}:{txn}"))
                    .collect();
            }
            None => d.reject(
                ReasonCode::MalformedClickId,
                "no click ID and no transaction ID were sent",
            ),
        }
        return Ok(d);
    };
    let click = match keys.verify(click_text) {
        Ok(click) => click,
        Err(ClickIdError::Malformed) => {
            d.reject(
                ReasonCode::MalformedClickId,
                ClickIdError::Malformed.to_string(),
            );
            return Ok(d);
        }
        Err(ClickIdError::Forged) => {
            d.reject(ReasonCode::ForgedClickId, ClickIdError::Forged.to_string());
            return Ok(d);
        }
    };
    let claims = *click.claims();
    d.clicked_at = Some(claims.clicked_at);

    let Some(offer) = catalog.offer(claims.offer_id) else {
        d.reject(
            ReasonCode::UnknownOffer,
            format!("the click's offer {} does not exist", claims.offer_id),
        );
        return Ok(d);
    };
    if offer.advertiser_id != advertiser.id {
        d.reject(
            ReasonCode::OfferNotOwned,
            "the click's offer belongs to another advertiser",
        );
        return Ok(d);
    }
    d.offer_id = Some(offer.id);
    d.affiliate_id = Some(claims.affiliate_id);
    let Some(affiliate) = catalog.affiliate(claims.affiliate_id) else {
        d.reject(
            ReasonCode::UnknownAffiliate,
            format!(
                "the click's affiliate {} does not exist",
                claims.affiliate_id
            ),
        );
        return Ok(d);
    };
    d.affiliate_key = Some(affiliate.key.clone());
    if let Some(txn) = &d.transaction_id {
        d.txn_key = Some(format!("{}:{txn}", offer.id));
    }

    let goal_name = postback
        .event
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| offer.default_goal.clone());
    d.goal = Some(goal_name.clone());
    let Some(goal) = offer.goals.get(&goal_name) else {
        let mut known: Vec<&str> = offer.goals.keys().map(String::as_str).collect();
        known.sort_unstable();
        d.reject(
            ReasonCode::UnknownGoal,
            format!(
                "offer {} has no goal {goal_name:?} (goals: {})",
                offer.key,
                known.join(", ")
            ),
        );
        return Ok(d);
    };
    if let Some(rule) = catalog
        .postbacks
        .get(&affiliate.key)
        .and_then(|p| p.select(&offer.key, &goal_name, d.status.as_str()))
    {
        d.postbacks.push(rule.endpoint.id.clone());
    }
    if !goal.allow_repeats {
        d.click_goal_key = Some(format!("{click_text}:{goal_name}"));
    }

    let code = postback
        .currency
        .as_deref()
        .filter(|c| !c.is_empty())
        .unwrap_or(offer.currency.code());
    let Some((currency, fx_rate)) = Currency::parse(code)
        .ok()
        .and_then(|c| catalog.fx_rate(c).map(|r| (c, r)))
    else {
        d.reject(
            ReasonCode::UnsupportedCurrency,
            format!(
                "{code:?} is not a currency with a configured rate into {}",
                catalog.network_currency
            ),
        );
        return Ok(d);
    };
    // Reversals refer to a conversion that already passed these checks.
    if d.status != Status::Reversed {
        let at = d.occurred_at.unwrap_or(now);
        let lag_ms = at.timestamp_millis() - claims.clicked_at.timestamp_millis();
        if lag_ms > offer.window_seconds * 1000 {
            d.reject(
                ReasonCode::ClickExpired,
                format!(
                    "the click is {}s old; offer {} converts within {}s",
                    lag_ms / 1000,
                    offer.key,
                    offer.window_seconds
                ),
            );
        } else if lag_ms < -CLOCK_SKEW_MS {
            d.reject(
                ReasonCode::ClickInFuture,
                "the click's time is after the conversion's",
            );
        } else if lag_ms < offer.min_lag_seconds * 1000 {
            let reason = Reason::new(
                ReasonCode::LagTooShort,
                format!(
                    "converted {lag_ms} ms after the click; offer {} requires at least {} s",
                    offer.key, offer.min_lag_seconds
                ),
            );
            match offer.lag_action {
                LagAction::Reject => d.rejections.push(reason),
                LagAction::Flag => d.flags.push(reason),
            }
        }
    }

    match amounts(postback.amount, currency, fx_rate, goal, catalog) {
        Ok(amounts) => d.amounts = Some(amounts),
        // A reversal moves no money of its own: it nets the conversion's postings. An amount
        // it reports that cannot be booked (past the limit at today's rate, negative as some
        // refunds are sent, finer than the currency) must not stop it: the answer notes it and
        // the amount is not recorded.
        Err(error) if d.status == Status::Reversed => {
            d.flags.push(Reason::new(
                ReasonCode::InvalidAmount,
                format!("the reversal's amount is not recorded: {error}"),
            ));
        }
        Err(error) => return Err(error.into()),
    }
    Ok(d)
}

/// The reported amount and the goal's payout and revenue, exact, in the network currency.
fn amounts(
    reported: Option<Decimal>,
    currency: Currency,
    fx_rate: Decimal,
    goal: &crate::store::catalog::Goal,
    catalog: &Catalog,
) -> Result<Amounts, AmountError> {
    let amount = match reported {
        Some(value) => Money::from_decimal(value, currency)?,
        None => Money::zero(currency),
    };
    let network = catalog.network_currency;
    let network_amount = amount.convert(network, fx_rate)?;
    let apply_rule = |rule: AmountRule| -> Result<Money, AmountError> {
        match rule {
            AmountRule::Fixed(m) => {
                let rate = catalog.fx_rate(m.currency).unwrap_or(Decimal::ONE);
                m.convert(network, rate)
            }
            AmountRule::Percent(p) => network_amount.percent(p),
        }
    };
    Ok(Amounts {
        amount,
        fx_rate,
        network_amount,
        payout: apply_rule(goal.payout)?,
        revenue: apply_rule(goal.revenue)?,
    })
}
