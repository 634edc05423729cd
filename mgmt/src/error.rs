//! The API's answer envelope: `{"code":0,"result":...}` on success, `{"code":N,"message":"..."}` for a
//! business error. Both are HTTP 200, as in EMQ.

use rocket::http::{ContentType, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use serde::Serialize;
use serde_json::json;

/// Error codes of the API (see the spec's table).
pub mod code {
    pub use midge_shared::control::code::*;
    pub const WRONG_CREDENTIALS: u16 = 103;
    pub const EMPTY_CREDENTIALS: u16 = 104;
    pub const NO_SUCH_USER: u16 = 105;
    pub const ADMIN_UNDELETABLE: u16 = 106;
    pub const NOT_JSON: u16 = 109;
    pub const USER_EXISTS: u16 = 113;
    pub const OLD_PASSWORD_WRONG: u16 = 114;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    pub fn badrpc(message: impl Into<String>) -> ApiError {
        ApiError::new(code::BADRPC, message)
    }
}

impl From<midge_shared::control::ControlError> for ApiError {
    fn from(e: midge_shared::control::ControlError) -> Self {
        ApiError { code: e.code, message: e.message }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::new(code::UNKNOWN, "database error")
    }
}

fn json_response(body: serde_json::Value) -> response::Result<'static> {
    let text = body.to_string();
    Response::build()
        .status(Status::Ok)
        .header(ContentType::JSON)
        .sized_body(text.len(), std::io::Cursor::new(text))
        .ok()
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        json_response(json!({"code": self.code, "message": self.message}))
    }
}

/// A successful result, wrapped as `{"code":0,"result":...}`.
pub struct Done(pub serde_json::Value);

impl<'r> Responder<'r, 'static> for Done {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        json_response(json!({"code": 0, "result": self.0}))
    }
}

pub type ApiResult = Result<Done, ApiError>;

/// Every HTTP error Rocket answers itself (no such route, a body it cannot read, a guard's refusal but
/// 401, which has its own catcher) in the same `{code, message}` envelope, the HTTP status as the code.
#[rocket::catch(default)]
pub fn catch_all(status: Status, _: &Request<'_>) -> (Status, (ContentType, String)) {
    let message = match status.code {
        404 => "not found",
        413 => "request body too large",
        503 => "too many logins being checked; try again",
        _ => status.reason().unwrap_or("error"),
    };
    (status, (ContentType::JSON, json!({"code": status.code, "message": message}).to_string()))
}

pub fn done(result: impl Serialize) -> ApiResult {
    serde_json::to_value(result).map(Done).map_err(|e| ApiError::new(code::UNKNOWN, e.to_string()))
}

/// `"result": []`, EMQ's answer to a command that succeeded.
pub fn ok() -> ApiResult {
    Ok(Done(json!([])))
}
