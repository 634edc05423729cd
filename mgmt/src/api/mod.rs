//! The `/api/v2` routes, one module per concern, each exporting its routes.

mod clients;
mod configs;
mod docs;
mod monitoring;
mod mqtt;
mod nodes;
mod plugins;
mod users;

use rocket::http::uri::Origin;
use rocket::http::RawStr;
use rocket::Route;

use std::collections::BTreeMap;

use midge_shared::calls::{Call, Done};
use serde::de::DeserializeOwned;

use crate::error::{code, ok, ApiError, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    [
        clients::routes(),
        configs::routes(),
        monitoring::routes(),
        mqtt::routes(),
        nodes::routes(),
        plugins::routes(),
        users::routes(),
    ]
    .concat()
}

pub use docs::routes as docs_routes;
pub use nodes::status;

/// The percent-decoded rest of the request path after its first `skip` segments.
///
/// Rocket's `<param..>` drops empty segments, but a client id or topic may contain `/` and even start
/// with it (`routes//World` is the topic `/World`), so captures are cut from the raw path instead.
pub fn tail(uri: &Origin<'_>, skip: usize) -> Result<String, ApiError> {
    let raw = uri.path().as_str();
    let rest = raw.splitn(skip + 2, '/').nth(skip + 1).unwrap_or("");
    RawStr::new(rest)
        .percent_decode()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::new(code::WRONG_TYPE, "path is not UTF-8"))
}

/// Runs a command on each answering node in turn until one succeeds (the client it names is on one of
/// them); otherwise the last node's error (112 for a client online nowhere, say).
pub async fn on_any_node(app: &App, call: impl Fn() -> Call<Done>) -> ApiResult {
    let mut last = None;
    for node in app.link.answering()? {
        match app.link.call(&node, call()).await {
            Ok(_) => return ok(),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::badrpc("no broker node answers")))
}

/// Asks every answering node the same thing; the answers by node name, in name order.
pub async fn per_node<T: DeserializeOwned>(
    app: &App,
    call: impl Fn() -> Call<T>,
) -> Result<BTreeMap<String, T>, ApiError> {
    let mut answers = BTreeMap::new();
    for node in app.link.answering()? {
        let answer = app.link.call(&node, call()).await?;
        answers.insert(node, answer);
    }
    Ok(answers)
}
