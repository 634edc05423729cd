//! Clients, sessions, subscriptions and routes: paged per node, looked up by key across all nodes.

use midge_shared::control::{ClientRow, Page, PageRequest, Request, RouteRow, SessionRow, SubscriptionRow};
use rocket::http::uri::Origin;
use rocket::{delete, get, put, routes, Route, State};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::{on_any_node, tail};
use crate::auth::Admin;
use crate::body::{paging, Body};
use crate::error::{code, done, ApiError, ApiResult};
use crate::App;

pub fn routes() -> Vec<Route> {
    routes![
        node_clients,
        node_client,
        client,
        kick,
        clean_acl_cache,
        node_sessions,
        node_session,
        session,
        node_subscriptions,
        node_subscription,
        subscription,
        routes_page,
        route,
    ]
}

/// `{"objects": [...]}`, the shape of every lookup by key.
fn objects<T: Serialize>(rows: Vec<T>) -> ApiResult {
    done(json!({ "objects": rows }))
}

/// Asks every node and concatenates the rows.
async fn from_all_nodes<T: DeserializeOwned>(app: &App, request: impl Fn() -> Request) -> Result<Vec<T>, ApiError> {
    let mut rows = Vec::new();
    for node in app.link.answering()? {
        rows.extend(app.link.ask::<Vec<T>>(&node, request()).await?);
    }
    Ok(rows)
}

async fn page<T: DeserializeOwned + Serialize>(
    app: &App,
    node: &str,
    curr_page: Option<&str>,
    page_size: Option<&str>,
    request: impl FnOnce(PageRequest) -> Request,
) -> ApiResult {
    let paging = paging(curr_page, page_size)?;
    done(app.link.ask::<Page<T>>(node, request(paging)).await?)
}

#[get("/nodes/<node>/clients?<curr_page>&<page_size>")]
async fn node_clients(
    _admin: Admin,
    app: &State<App>,
    node: &str,
    curr_page: Option<&str>,
    page_size: Option<&str>,
) -> ApiResult {
    page::<ClientRow>(app, node, curr_page, page_size, Request::ListClients).await
}

#[get("/nodes/<node>/clients/<_..>")]
async fn node_client(_admin: Admin, app: &State<App>, node: &str, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 5)?;
    objects(app.link.ask::<Vec<ClientRow>>(node, Request::GetClient { client_id }).await?)
}

#[get("/clients/<_..>")]
async fn client(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 3)?;
    objects(from_all_nodes::<ClientRow>(app, || Request::GetClient { client_id: client_id.clone() }).await?)
}

#[delete("/clients/<_..>")]
async fn kick(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 3)?;
    on_any_node(app, || Request::Kick { client_id: client_id.clone() }).await
}

/// `PUT clients/{clientid}/clean_acl_cache`; the client id may itself contain `/`.
#[put("/clients/<_..>", data = "<body>")]
async fn clean_acl_cache(_admin: Admin, app: &State<App>, uri: &Origin<'_>, body: String) -> ApiResult {
    let path = tail(uri, 3)?;
    let client_id =
        path.strip_suffix("/clean_acl_cache").ok_or_else(|| ApiError::new(code::UNKNOWN, "no such route"))?.to_string();
    let topic = Body::parse(&body)?.string("topic")?;
    on_any_node(app, || Request::CleanAclCache { client_id: client_id.clone(), topic: topic.clone() }).await
}

#[get("/nodes/<node>/sessions?<curr_page>&<page_size>")]
async fn node_sessions(
    _admin: Admin,
    app: &State<App>,
    node: &str,
    curr_page: Option<&str>,
    page_size: Option<&str>,
) -> ApiResult {
    page::<SessionRow>(app, node, curr_page, page_size, Request::ListSessions).await
}

#[get("/nodes/<node>/sessions/<_..>")]
async fn node_session(_admin: Admin, app: &State<App>, node: &str, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 5)?;
    objects(app.link.ask::<Vec<SessionRow>>(node, Request::GetSession { client_id }).await?)
}

#[get("/sessions/<_..>")]
async fn session(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 3)?;
    objects(from_all_nodes::<SessionRow>(app, || Request::GetSession { client_id: client_id.clone() }).await?)
}

#[get("/nodes/<node>/subscriptions?<curr_page>&<page_size>")]
async fn node_subscriptions(
    _admin: Admin,
    app: &State<App>,
    node: &str,
    curr_page: Option<&str>,
    page_size: Option<&str>,
) -> ApiResult {
    page::<SubscriptionRow>(app, node, curr_page, page_size, Request::ListSubscriptions).await
}

#[get("/nodes/<node>/subscriptions/<_..>")]
async fn node_subscription(_admin: Admin, app: &State<App>, node: &str, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 5)?;
    objects(app.link.ask::<Vec<SubscriptionRow>>(node, Request::GetSubscriptions { client_id }).await?)
}

#[get("/subscriptions/<_..>")]
async fn subscription(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 3)?;
    objects(
        from_all_nodes::<SubscriptionRow>(app, || Request::GetSubscriptions { client_id: client_id.clone() }).await?,
    )
}

/// Routes are cluster-wide, ordered by (topic, node). Each node is asked for the first
/// `page × size` of its own routes, which is all a merged page can need.
#[get("/routes?<curr_page>&<page_size>")]
async fn routes_page(_admin: Admin, app: &State<App>, curr_page: Option<&str>, page_size: Option<&str>) -> ApiResult {
    let paging = paging(curr_page, page_size)?;
    let window = PageRequest { page: 1, size: paging.page.saturating_mul(paging.size) };
    let mut total = 0;
    let mut rows: Vec<RouteRow> = Vec::new();
    for node in app.link.answering()? {
        let part: Page<RouteRow> = app.link.ask(&node, Request::ListRoutes(window)).await?;
        total += part.total_num;
        rows.extend(part.objects);
    }
    rows.sort_by(|a, b| (&a.topic, &a.node).cmp(&(&b.topic, &b.node)));
    let skip = (paging.page - 1).saturating_mul(paging.size) as usize;
    let objects: Vec<RouteRow> = rows.into_iter().skip(skip).take(paging.size as usize).collect();
    done(Page {
        current_page: paging.page,
        page_size: paging.size,
        total_num: total,
        total_page: total.div_ceil(paging.size),
        objects,
    })
}

#[get("/routes/<_..>")]
async fn route(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let topic = tail(uri, 3)?;
    objects(from_all_nodes::<RouteRow>(app, || Request::GetRoute { topic: topic.clone() }).await?)
}
