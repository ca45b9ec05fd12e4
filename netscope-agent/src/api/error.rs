//! The API's one error type: every refusal is a JSON body `{"error": code, "message": …}`
//! (with the offending `parameter` when there is one) and the status that says why. A
//! client's mistake is logged at DEBUG at most, never at ERROR.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("query parameter `{parameter}`: {message}")]
    BadParameter { parameter: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("too many requests: retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("{0} is not available in this mode")]
    NotInThisMode(&'static str),
    #[error("too many live clients ({0} at most); retry later")]
    TooManyClients(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

impl ApiError {
    pub fn parameter(parameter: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadParameter {
            parameter: parameter.into(),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            Self::NotInThisMode(_) => (StatusCode::NOT_FOUND, "not_in_this_mode"),
            Self::TooManyClients(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_clients"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && !matches!(self, Self::TooManyClients(_)) {
            tracing::error!(error = %self, "API request failed");
        } else {
            tracing::debug!(error = %self, "API request refused");
        }
        let parameter = match &self {
            Self::BadParameter { parameter, .. } => Some(parameter.as_str()),
            _ => None,
        };
        let body = Body {
            error: code,
            message: self.to_string(),
            parameter,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"netscope\""),
                );
            }
            Self::TooManyClients(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            _ => {}
        }
        response
    }
}
