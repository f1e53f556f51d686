//! Which postback endpoint (if any) a conversion goes to, and the request it becomes.
//!
//! Contract
//! - Input: an affiliate's [`AffiliatePostbacks`] (global rule + per-offer overrides, compiled
//!   from config at start-up), the conversion's offer, goal (event) and status, and its
//!   [`PostbackValues`].
//! - Output: [`AffiliatePostbacks::select`] gives the one matching [`PostbackRule`] or none;
//!   [`Endpoint::build_request`] gives an [`OutboundRequest`] (method, URL, headers, body) ready
//!   for `delivery::client`.
//! - Errors: [`EndpointError`] at config compile time; [`RenderError`] when building a request.
//! - Side effects: none.
//!
//! Precedence: an offer override *replaces* the affiliate's global rule for that offer; if the
//! override's goal/status filters do not match, nothing is sent (no fall-back to the global
//! rule), so an override can also be used to narrow or silence one offer.

use std::collections::{BTreeSet, HashMap};

use url::Url;

use super::signing::{SigningKeys, webhook_id};
use super::template::{BodyTemplate, PostbackValues, RenderError, TemplateError, UrlTemplate};

/// Errors compiling endpoint configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("invalid postback template")]
    Template(#[from] TemplateError),
    #[error("invalid POST URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("endpoint {id} uses http:// but is not marked allow_insecure_http")]
    InsecureHttp { id: String },
}

/// How a postback is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// GET with all data in the URL template.
    Get { url: UrlTemplate },
    /// POST of a JSON body, signed per Standard Webhooks when keys are configured.
    Post {
        url: Url,
        body: BodyTemplate,
        signing: Option<SigningKeys>,
    },
}

/// One configured destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Stable id: the concurrency-limit key, the 410-pause key, and part of logs.
    pub id: String,
    pub method: Method,
    /// Plain http:// is refused unless the operator marked this endpoint explicitly.
    pub allow_insecure_http: bool,
}

impl Endpoint {
    /// A GET endpoint from a URL template.
    pub fn get(id: &str, template: &str, allow_insecure_http: bool) -> Result<Self, EndpointError> {
        let url = UrlTemplate::parse(template)?;
        let is_http = url
            .as_str()
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
        check_scheme(id, is_http, allow_insecure_http)?;
        Ok(Self {
            id: id.to_owned(),
            method: Method::Get { url },
            allow_insecure_http,
        })
    }

    /// A POST endpoint; `body` is a JSON template (None = the canonical body).
    pub fn post(
        id: &str,
        url: &str,
        body: Option<&str>,
        signing: Option<SigningKeys>,
        allow_insecure_http: bool,
    ) -> Result<Self, EndpointError> {
        // Only what precedes the query goes into the message: the query may hold a key.
        let shown = url.split('?').next().unwrap_or_default().to_owned();
        let parsed = Url::parse(url).map_err(|e| EndpointError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EndpointError::BadUrl {
                url: shown,
                reason: "scheme must be http or https".to_owned(),
            });
        }
        check_scheme(id, parsed.scheme() == "http", allow_insecure_http)?;
        let body = match body {
            Some(t) => BodyTemplate::parse(t)?,
            None => BodyTemplate::canonical(),
        };
        Ok(Self {
            id: id.to_owned(),
            method: Method::Post {
                url: parsed,
                body,
                signing,
            },
            allow_insecure_http,
        })
    }

    /// Renders the request for one attempt. `delivery_id` gives the stable `webhook-id`;
    /// `attempt_unix` is this attempt's `webhook-timestamp`.
    pub fn build_request(
        &self,
        delivery_id: &str,
        values: &PostbackValues,
        attempt_unix: i64,
    ) -> Result<OutboundRequest, RenderError> {
        Ok(match &self.method {
            Method::Get { url } => OutboundRequest {
                endpoint_id: self.id.clone(),
                method: HttpMethod::Get,
                url: url.render(values)?,
                headers: Vec::new(),
                body: None,
                allow_insecure_http: self.allow_insecure_http,
            },
            Method::Post { url, body, signing } => {
                let bytes = body.render(values);
                let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
                if let Some(keys) = signing {
                    let signed = keys.sign(&webhook_id(delivery_id), attempt_unix, &bytes);
                    headers.extend(
                        signed
                            .pairs()
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                    );
                }
                OutboundRequest {
                    endpoint_id: self.id.clone(),
                    method: HttpMethod::Post,
                    url: url.clone(),
                    headers,
                    body: Some(bytes),
                    allow_insecure_http: self.allow_insecure_http,
                }
            }
        })
    }
}

fn check_scheme(id: &str, is_http: bool, allowed: bool) -> Result<(), EndpointError> {
    if is_http && !allowed {
        return Err(EndpointError::InsecureHttp { id: id.to_owned() });
    }
    Ok(())
}

/// HTTP method of an outbound request (closed: postbacks are GET or POST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

/// A fully rendered request, the input of `delivery::client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub endpoint_id: String,
    pub method: HttpMethod,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub allow_insecure_http: bool,
}

/// An endpoint plus the goals and statuses it fires for (`None` = all).
#[derive(Debug, Clone, PartialEq)]
pub struct PostbackRule {
    pub endpoint: Endpoint,
    pub goals: Option<BTreeSet<String>>,
    pub statuses: Option<BTreeSet<String>>,
}

impl PostbackRule {
    fn matches(&self, goal: &str, status: &str) -> bool {
        self.goals.as_ref().is_none_or(|g| g.contains(goal))
            && self.statuses.as_ref().is_none_or(|s| s.contains(status))
    }
}

/// One affiliate's postback configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AffiliatePostbacks {
    pub global: Option<PostbackRule>,
    /// Keyed by offer id.
    pub offer_overrides: HashMap<String, PostbackRule>,
}

impl AffiliatePostbacks {
    /// The rule to fire for this conversion, if any (see the module doc for precedence).
    pub fn select(&self, offer_id: &str, goal: &str, status: &str) -> Option<&PostbackRule> {
        let rule = match self.offer_overrides.get(offer_id) {
            Some(r) => r,
            None => self.global.as_ref()?,
        };
        rule.matches(goal, status).then_some(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::signing::{WebhookSecret, verify};

    fn rule(id: &str, goals: Option<&[&str]>, statuses: Option<&[&str]>) -> PostbackRule {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        PostbackRule {
            endpoint: Endpoint::get(id, "https://aff.example/pb?c={click_id}", false)
                .expect("test value"),
            goals: goals.map(set),
            statuses: statuses.map(set),
        }
    }

    #[test]
    fn the_global_rule_fires_for_matching_goals_and_statuses_only() {
        let a = AffiliatePostbacks {
            global: Some(rule("g", Some(&["purchase"]), Some(&["approved"]))),
            ..Default::default()
        };
        assert_eq!(
            a.select("1", "purchase", "approved")
                .map(|r| r.endpoint.id.as_str()),
            Some("g")
        );
        assert!(a.select("1", "lead", "approved").is_none());
        assert!(a.select("1", "purchase", "pending").is_none());
    }

    #[test]
    fn an_offer_override_replaces_the_global_rule_without_fallback() {
        let mut a = AffiliatePostbacks {
            global: Some(rule("g", None, None)),
            ..Default::default()
        };
        a.offer_overrides
            .insert("7".into(), rule("o7", Some(&["install"]), None));
        assert_eq!(
            a.select("7", "install", "approved")
                .map(|r| r.endpoint.id.as_str()),
            Some("o7")
        );
        assert!(
            a.select("7", "purchase", "approved").is_none(),
            "no fall-back to global"
        );
        assert_eq!(
            a.select("8", "purchase", "approved")
                .map(|r| r.endpoint.id.as_str()),
            Some("g")
        );
    }

    #[test]
    fn no_configuration_means_no_postback() {
        assert!(
            AffiliatePostbacks::default()
                .select("1", "purchase", "approved")
                .is_none()
        );
    }

    #[test]
    fn plain_http_endpoints_must_be_marked_explicitly() {
        assert_eq!(
            Endpoint::get("e", "http://aff.example/pb", false),
            Err(EndpointError::InsecureHttp { id: "e".into() })
        );
        assert!(Endpoint::get("e", "http://aff.example/pb", true).is_ok());
        assert!(matches!(
            Endpoint::post("e", "http://aff.example/pb", None, None, false),
            Err(EndpointError::InsecureHttp { .. })
        ));
    }

    #[test]
    fn a_signed_post_carries_a_stable_id_and_a_verifiable_signature() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let keys = SigningKeys::parse([secret]).expect("test value");
        let e = Endpoint::post(
            "p",
            "https://aff.example/hook",
            Some(r#"{"e":"{event}"}"#),
            Some(keys),
            false,
        )
        .expect("test value");
        let values = PostbackValues {
            event: "purchase".into(),
            ..Default::default()
        };
        let r1 = e
            .build_request("d-1", &values, 1_700_000_000)
            .expect("test value");
        let r2 = e
            .build_request("d-1", &values, 1_700_000_300)
            .expect("test value");
        let header = |r: &OutboundRequest, k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header(&r1, "webhook-id"), "msg_d-1");
        assert_eq!(header(&r1, "webhook-id"), header(&r2, "webhook-id"));
        assert_ne!(
            header(&r1, "webhook-timestamp"),
            header(&r2, "webhook-timestamp")
        );
        let body = r1.body.clone().unwrap_or_default();
        assert_eq!(body, br#"{"e":"purchase"}"#);
        let s = WebhookSecret::parse(secret).expect("test value");
        assert!(verify(
            &s,
            "msg_d-1",
            1_700_000_000,
            &body,
            &header(&r1, "webhook-signature")
        ));
    }
}
