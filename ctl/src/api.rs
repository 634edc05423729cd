//! The sidecar's `/api/v2`, as midge-ctl calls it: Basic auth, the `{code, result}` envelope unwrapped,
//! and every way a call can fail sorted into what the exit code tells a script.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::credentials::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error code of its own (EMQ's codes: 112 "client not online", ...).
    #[error("{message} (code {code})")]
    Refused { code: u64, message: String },
    #[error("authentication failed: wrong username or password for {0}")]
    Unauthorized(String),
    #[error("cannot reach the sidecar at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unexpected reply from {url}: {reason}")]
    BadReply { url: String, reason: String },
}

impl ApiError {
    /// What the process exits with: 1 refused, 3 unreachable or a bad reply, 4 authentication (2 is
    /// clap's, for usage).
    pub fn exit_code(&self) -> i32 {
        match self {
            ApiError::Refused { .. } => 1,
            ApiError::Unreachable { .. } | ApiError::BadReply { .. } => 3,
            ApiError::Unauthorized(_) => 4,
        }
    }
}

pub struct Api {
    http: reqwest::Client,
    credentials: Credentials,
}

impl Api {
    pub fn new(credentials: Credentials) -> Api {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS builds");
        Api { http, credentials }
    }

    pub fn user(&self) -> &str {
        &self.credentials.user
    }

    pub fn password(&self) -> &str {
        &self.credentials.password
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    /// The `result` of a call under `/api/v2/`.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        let url = format!("{}/api/v2/{path}", self.credentials.url.trim_end_matches('/'));
        let mut request =
            self.http.request(method, &url).basic_auth(&self.credentials.user, Some(&self.credentials.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.map_err(|e| ApiError::Unreachable { url: url.clone(), reason: e.to_string() })?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized(self.credentials.url.clone()));
        }
        let text = response.text().await.map_err(|e| ApiError::BadReply { url: url.clone(), reason: e.to_string() })?;
        let envelope: Value = serde_json::from_str(&text)
            .map_err(|e| ApiError::BadReply { url: url.clone(), reason: format!("not JSON ({e}): {text}") })?;
        match envelope["code"].as_u64() {
            Some(0) => Ok(envelope.get("result").cloned().unwrap_or(Value::Null)),
            Some(code) => {
                let message = envelope["message"].as_str().unwrap_or("error").to_string();
                Err(ApiError::Refused { code, message })
            }
            None => Err(ApiError::BadReply { url, reason: format!("no code in {text}") }),
        }
    }

    /// `GET /status`, outside `/api/v2` and without authentication: is the node up.
    pub async fn status(&self) -> Result<String, ApiError> {
        let url = format!("{}/status", self.credentials.url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ApiError::Unreachable { url: url.clone(), reason: e.to_string() })?;
        response.text().await.map_err(|e| ApiError::BadReply { url, reason: e.to_string() })
    }

    /// Every row of a paged listing, page after page.
    pub async fn all_pages(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let mut rows = Vec::new();
        let mut page = 1;
        loop {
            let result = self.get(&format!("{path}?curr_page={page}&page_size=1000")).await?;
            if let Some(objects) = result["objects"].as_array() {
                rows.extend(objects.iter().cloned());
            }
            let total_pages = result["total_page"].as_u64().unwrap_or(1);
            if page >= total_pages {
                return Ok(rows);
            }
            page += 1;
        }
    }

    /// The names of the cluster's nodes.
    pub async fn nodes(&self) -> Result<Vec<String>, ApiError> {
        let nodes = self.get("management/nodes").await?;
        Ok(nodes.as_array().into_iter().flatten().filter_map(|n| n["name"].as_str().map(str::to_string)).collect())
    }
}

/// A path segment with the characters a client id or topic may hold escaped.
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}
