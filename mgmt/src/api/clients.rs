//! Clients, sessions, subscriptions and routes: paged per node, looked up by key across all nodes.

use midge_shared::calls::Call;
use midge_shared::control::{ClientRow, Page, PageRequest, Request, RouteRow, SessionRow, SubscriptionRow};
use rocket::http::uri::Origin;
use rocket::{delete, get, put, routes, Route, State};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::docs::{AclCacheBody, ClientIdParam, NodeParam, Nothing, Objects, Paging, Reply};
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
async fn from_all_nodes<T: DeserializeOwned>(app: &App, call: impl Fn() -> Call<Vec<T>>) -> Result<Vec<T>, ApiError> {
    let mut rows = Vec::new();
    for node in app.link.answering()? {
        rows.extend(app.link.call(&node, call()).await?);
    }
    Ok(rows)
}

/// A page of one node's listing.
async fn page<T: DeserializeOwned + Serialize>(
    app: &App,
    node: &str,
    curr_page: Option<&str>,
    page_size: Option<&str>,
    call: impl FnOnce(PageRequest) -> Call<Page<T>>,
) -> ApiResult {
    let paging = paging(curr_page, page_size)?;
    done(app.link.call(node, call(paging)).await?)
}

/// The three routes of a listing keyed by client id (clients, sessions, subscriptions): a page of one
/// node's (`nodes/{node}/{what}`), one client's on one node (`nodes/{node}/{what}/{clientid}`), and one
/// client's on every node (`{what}/{clientid}`). A client id may contain `/`, so it is the rest of the
/// path.
macro_rules! by_client {
    ($page:ident = $page_path:literal, $node_one:ident = $node_one_path:literal, $anywhere:ident = $anywhere_path:literal;
     $list:path, $get:path;
     $row:ty, $tag:literal, $doc_page:literal, $doc_node_one:literal, $doc_anywhere:literal) => {
        #[utoipa::path(get, path = $doc_page, tag = $tag, params(NodeParam, Paging),
            responses((status = 200, description = "A page of the node's rows, by client id", body = Reply<Page<$row>>)))]
        #[get($page_path)]
        async fn $page(
            _admin: Admin,
            app: &State<App>,
            node: &str,
            curr_page: Option<&str>,
            page_size: Option<&str>,
        ) -> ApiResult {
            page(app, node, curr_page, page_size, $list).await
        }

        #[utoipa::path(get, path = $doc_node_one, tag = $tag, params(NodeParam, ClientIdParam),
            responses((status = 200, description = "The client's rows on the node", body = Reply<Objects<$row>>)))]
        #[get($node_one_path)]
        async fn $node_one(_admin: Admin, app: &State<App>, node: &str, uri: &Origin<'_>) -> ApiResult {
            let client_id = tail(uri, 5)?;
            objects(app.link.call(node, $get(client_id)).await?)
        }

        #[utoipa::path(get, path = $doc_anywhere, tag = $tag, params(ClientIdParam),
            responses((status = 200, description = "The client's rows on every node", body = Reply<Objects<$row>>)))]
        #[get($anywhere_path)]
        async fn $anywhere(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
            let client_id = tail(uri, 3)?;
            objects(from_all_nodes(app, || $get(client_id.clone())).await?)
        }
    };
}

by_client!(
    node_clients = "/nodes/<node>/clients?<curr_page>&<page_size>",
    node_client = "/nodes/<node>/clients/<_..>",
    client = "/clients/<_..>";
    Request::list_clients, Request::get_client;
    ClientRow, "clients", "/nodes/{node}/clients", "/nodes/{node}/clients/{clientid}", "/clients/{clientid}"
);
by_client!(
    node_sessions = "/nodes/<node>/sessions?<curr_page>&<page_size>",
    node_session = "/nodes/<node>/sessions/<_..>",
    session = "/sessions/<_..>";
    Request::list_sessions, Request::get_session;
    SessionRow, "sessions", "/nodes/{node}/sessions", "/nodes/{node}/sessions/{clientid}", "/sessions/{clientid}"
);
by_client!(
    node_subscriptions = "/nodes/<node>/subscriptions?<curr_page>&<page_size>",
    node_subscription = "/nodes/<node>/subscriptions/<_..>",
    subscription = "/subscriptions/<_..>";
    Request::list_subscriptions, Request::get_subscriptions;
    SubscriptionRow, "subscriptions", "/nodes/{node}/subscriptions", "/nodes/{node}/subscriptions/{clientid}",
    "/subscriptions/{clientid}"
);

#[utoipa::path(delete, path = "/clients/{clientid}", tag = "clients", summary = "Kick a client", params(ClientIdParam), responses((status = 200, description = "Disconnected; 112 if it is online nowhere", body = Reply<Nothing>)))]
#[delete("/clients/<_..>")]
async fn kick(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let client_id = tail(uri, 3)?;
    on_any_node(app, || Request::kick(client_id.clone())).await
}

/// `PUT clients/{clientid}/clean_acl_cache`; the client id may itself contain `/`.
#[utoipa::path(put, path = "/clients/{clientid}/clean_acl_cache", tag = "clients", summary = "Clean a client's ACL cache for a topic", params(ClientIdParam), request_body = AclCacheBody, responses((status = 200, description = "Cleaned; 112 if it is online nowhere", body = Reply<Nothing>)))]
#[put("/clients/<_..>", data = "<body>")]
async fn clean_acl_cache(_admin: Admin, app: &State<App>, uri: &Origin<'_>, body: String) -> ApiResult {
    let path = tail(uri, 3)?;
    let client_id =
        path.strip_suffix("/clean_acl_cache").ok_or_else(|| ApiError::new(code::UNKNOWN, "no such route"))?.to_string();
    let topic = Body::parse(&body)?.string("topic")?;
    on_any_node(app, || Request::clean_acl_cache(client_id.clone(), topic.clone())).await
}

/// Routes are cluster-wide, ordered by (topic, node). Each node is asked for the first
/// `page × size` of its own routes, which is all a merged page can need.
#[utoipa::path(get, path = "/routes", tag = "routes", params(Paging), responses((status = 200, description = "A page of every node's routes, by (topic, node)", body = Reply<Page<RouteRow>>)))]
#[get("/routes?<curr_page>&<page_size>")]
async fn routes_page(_admin: Admin, app: &State<App>, curr_page: Option<&str>, page_size: Option<&str>) -> ApiResult {
    let paging = paging(curr_page, page_size)?;
    let window = PageRequest { page: 1, size: paging.page.saturating_mul(paging.size) };
    let mut total = 0;
    let mut rows: Vec<RouteRow> = Vec::new();
    for node in app.link.answering()? {
        let part = app.link.call(&node, Request::list_routes(window)).await?;
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

#[utoipa::path(get, path = "/routes/{topic}", tag = "routes", params(("topic" = String, Path, description = "A topic filter; it may contain `/`, while `#`, `?` and `%` must be percent-encoded")), responses((status = 200, description = "The routes of exactly this filter", body = Reply<Objects<RouteRow>>)))]
#[get("/routes/<_..>")]
async fn route(_admin: Admin, app: &State<App>, uri: &Origin<'_>) -> ApiResult {
    let topic = tail(uri, 3)?;
    objects(from_all_nodes(app, || Request::get_route(topic.clone())).await?)
}
