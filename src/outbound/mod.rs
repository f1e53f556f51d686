//! Outbound postbacks, the pure part: which endpoint a conversion goes to, what the request
//! looks like (templates, Standard Webhooks signature) and when each attempt runs (retry
//! schedule). No I/O here: `delivery` sends, the worker persists.
//!
//! Flow: `endpoint::AffiliatePostbacks::select` → `endpoint::Endpoint::build_request`
//! (uses `template` + `signing`) → `delivery::client` → `schedule::classify` →
//! `schedule::RetrySchedule::next_attempt_at`.

pub mod endpoint;
pub mod enqueue;
pub mod handoff;
pub mod job;
pub mod schedule;
pub mod signing;
pub mod template;

pub use endpoint::{
    AffiliatePostbacks, Endpoint, EndpointError, HttpMethod, Method, OutboundRequest, PostbackRule,
};
pub use enqueue::NewDelivery;
pub use handoff::{Handoff, Reservation};
pub use job::{DeliveryJob, QUEUE};
pub use schedule::{
    AttemptOutcome, DeadLetterReason, NextStep, RetryReason, RetrySchedule, ScheduleError, Verdict,
    classify, parse_retry_after,
};
pub use signing::{SignedHeaders, SigningError, SigningKeys, WebhookSecret, verify, webhook_id};
pub use template::{BodyTemplate, PostbackValues, RenderError, TemplateError, Token, UrlTemplate};
