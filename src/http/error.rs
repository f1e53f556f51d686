//! The one HTTP error type: decides the status and the stable code; 5xx details are logged
//! once here and never sent to the caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::domain::{Reason, ReasonCode, Receipt, Verdict};
use crate::pipeline::{ClickError, HookError, PostbackError};
use crate::store::StoreError;
use crate::store::writer::error_chain;

/// An answer that is not a decision: malformed, unauthenticated, or a server-side failure.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ReasonCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(code: ReasonCode, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(error), code = code.as_str(), "Request failed.");
        let (status, message) = match code {
            ReasonCode::StorageUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later",
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        Self::new(status, code, message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ReasonCode::NotFound, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Receipt {
            status: Verdict::Rejected,
            conversion_id: None,
            reasons: vec![Reason::new(self.code, self.message)],
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<PostbackError> for ApiError {
    fn from(e: PostbackError) -> Self {
        let code = e.code();
        let status = match code {
            ReasonCode::BadToken => StatusCode::UNAUTHORIZED,
            ReasonCode::IpNotAllowed => StatusCode::FORBIDDEN,
            ReasonCode::StorageUnavailable => return Self::internal(code, &e),
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<ClickError> for ApiError {
    fn from(e: ClickError) -> Self {
        let code = e.code();
        let status = match &e {
            ClickError::UnknownOffer(_)
            | ClickError::OfferPaused(_)
            | ClickError::UnknownAffiliate(_) => StatusCode::NOT_FOUND,
            ClickError::MissingAffiliate => StatusCode::BAD_REQUEST,
            ClickError::Issue(_) | ClickError::Queue(_) => return Self::internal(code, &e),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> Self {
        let code = e.code();
        let status = match code {
            ReasonCode::UnknownConnector => StatusCode::NOT_FOUND,
            ReasonCode::MissingSignature
            | ReasonCode::BadSignature
            | ReasonCode::BadTimestamp
            | ReasonCode::StaleTimestamp
            | ReasonCode::MissingToken
            | ReasonCode::BadToken => StatusCode::UNAUTHORIZED,
            ReasonCode::OrgNotAllowed | ReasonCode::IpNotAllowed => StatusCode::FORBIDDEN,
            ReasonCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ReasonCode::StorageUnavailable => return Self::internal(code, &e),
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(ReasonCode::StorageUnavailable, &e)
    }
}
