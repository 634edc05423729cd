//! `mqtt/publish`, `mqtt/subscribe`, `mqtt/unsubscribe`.

use midge_shared::control::Request;
use rocket::{post, routes, Route, State};

use super::docs::{Nothing, PublishBody, Reply, SubscribeBody, UnsubscribeBody};
use super::on_any_node;
use crate::auth::Admin;
use crate::body::Body;
use crate::error::{ok, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![publish, subscribe, unsubscribe]
}

/// Publishes through the first known node; the broker routes it to subscribers everywhere it can.
#[utoipa::path(post, path = "/mqtt/publish", tag = "mqtt", request_body = PublishBody, responses((status = 200, description = "Published; 102 for a topic that is not a valid topic name", body = Reply<Nothing>)))]
#[post("/mqtt/publish", data = "<body>")]
async fn publish(_admin: Admin, app: &State<App>, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let call = Request::publish(
        body.string("topic")?,
        body.opt_string("payload")?.unwrap_or_default(),
        body.opt_qos("qos")?.unwrap_or(0),
        body.opt_bool("retain")?.unwrap_or(false),
        body.opt_string("client_id")?.unwrap_or_else(|| "http".into()),
    );
    let node = app.link.answering()?.swap_remove(0);
    app.link.call(&node, call).await?;
    ok()
}

#[utoipa::path(post, path = "/mqtt/subscribe", tag = "mqtt", request_body = SubscribeBody, responses((status = 200, description = "Subscribed; 112 if the client is online nowhere", body = Reply<Nothing>)))]
#[post("/mqtt/subscribe", data = "<body>")]
async fn subscribe(_admin: Admin, app: &State<App>, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let topic = body.string("topic")?;
    let client_id = body.string("client_id")?;
    let qos = body.opt_qos("qos")?.unwrap_or(0);
    on_any_node(app, || Request::subscribe(client_id.clone(), topic.clone(), qos)).await
}

#[utoipa::path(post, path = "/mqtt/unsubscribe", tag = "mqtt", request_body = UnsubscribeBody, responses((status = 200, description = "Unsubscribed", body = Reply<Nothing>)))]
#[post("/mqtt/unsubscribe", data = "<body>")]
async fn unsubscribe(_admin: Admin, app: &State<App>, body: String) -> ApiResult {
    let body = Body::parse(&body)?;
    let topic = body.string("topic")?;
    let client_id = body.string("client_id")?;
    on_any_node(app, || Request::unsubscribe(client_id.clone(), topic.clone())).await
}
