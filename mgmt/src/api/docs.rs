//! The OpenAPI 3 document of `/api/v2`, generated from the handlers' `#[utoipa::path]` attributes and
//! the wire types, served at `/api-docs/openapi.json` with a vendored Swagger UI at `/api-docs/`.
//!
//! Request bodies are read field by field (to answer EMQ's 107/108/109), so the types below describe
//! them for the document only; a test sends every example to the live API to keep the two in step.

use std::collections::BTreeMap;

use rocket::http::{ContentType, Header};
use rocket::{get, routes, Route};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::{clients, configs, monitoring, mqtt, nodes, plugins, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Midge management API",
        description = "EMQ 2.x's `/api/v2`, served by the Midge sidecar. Every route takes HTTP Basic auth \
            against the admin users, except `POST /auth`. Success is HTTP 200 with `{\"code\":0,\"result\":...}`; \
            business errors are HTTP 200 too, with a non-zero `code` and a `message` (`ErrorReply`): 101 node \
            unknown or not answering, 102 unknown error, 103 wrong credentials, 104 empty credentials, 105 no \
            such user, 106 admin cannot be deleted, 107 parameter missing, 108 parameter of the wrong type, 109 \
            body not JSON, 110 plugin already active, 111 plugin already inactive, 112 client not online, 113 \
            user exists, 114 old password wrong. No route: HTTP 404; no or wrong credentials: HTTP 401.",
        license(name = "Apache-2.0"),
    ),
    servers((url = "/api/v2")),
    paths(
        nodes::management_nodes, nodes::management_node, nodes::monitoring_nodes, nodes::monitoring_node,
        nodes::alarms,
        clients::node_clients, clients::node_client, clients::client, clients::kick, clients::clean_acl_cache,
        clients::node_sessions, clients::node_session, clients::session,
        clients::node_subscriptions, clients::node_subscription, clients::subscription,
        clients::routes_page, clients::route,
        mqtt::publish, mqtt::subscribe, mqtt::unsubscribe,
        plugins::list, plugins::switch, plugins::get_config, plugins::put_config,
        monitoring::listeners, monitoring::node_listeners, monitoring::metrics, monitoring::node_metrics,
        monitoring::stats, monitoring::node_stats, monitoring::node_recon, monitoring::history,
        configs::all, configs::node_configs, configs::put_all, configs::put_node,
        users::list, users::get_user, users::create, users::update, users::remove, users::authenticate,
        users::change_password,
    ),
    components(schemas(ErrorReply)),
    modifiers(&BasicAuth),
    security(("basic" = [])),
    tags(
        (name = "nodes", description = "The broker nodes"),
        (name = "clients", description = "Connected clients"),
        (name = "sessions", description = "Sessions, online and parked"),
        (name = "subscriptions", description = "Subscriptions by client"),
        (name = "routes", description = "Topic filters and the nodes that hold them"),
        (name = "mqtt", description = "Publish and (un)subscribe through the broker"),
        (name = "plugins", description = "Plugins and their configs"),
        (name = "monitoring", description = "Listeners, metrics, stats, diagnostics"),
        (name = "configs", description = "Hot configuration"),
        (name = "users", description = "Admin users of this API"),
    )
)]
pub struct ApiDoc;

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// `{"code": 0, "result": ...}`: a success.
#[derive(Serialize, ToSchema)]
pub struct Reply<T> {
    /// Always 0.
    #[schema(minimum = 0, maximum = 0)]
    pub code: u16,
    pub result: T,
}

/// `{"code": N, "message": "..."}`: a business error, also HTTP 200.
#[derive(Serialize, ToSchema)]
pub struct ErrorReply {
    #[schema(minimum = 1, example = 112)]
    pub code: u16,
    #[schema(example = "client not online")]
    pub message: String,
}

/// `[]`: what a command answers when it is done.
pub struct Nothing;

impl utoipa::PartialSchema for Nothing {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder};
        ArrayBuilder::new().items(ObjectBuilder::new()).max_items(Some(0)).into()
    }
}

impl ToSchema for Nothing {}

/// `{"objects": [...]}`: a lookup by key (nothing found is an empty list).
#[derive(Serialize, ToSchema)]
pub struct Objects<T> {
    pub objects: Vec<T>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub struct NodeParam {
    /// A node name, e.g. `midge@127.0.0.1`.
    pub node: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub struct ClientIdParam {
    /// A client id; it may contain `/`, while `#`, `?` and `%` must be percent-encoded.
    pub clientid: String,
}

/// Pages count from 1; a bad number is 108.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by the document only
pub struct Paging {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1)]
    pub curr_page: Option<u64>,
    /// Rows per page (default 20).
    #[param(minimum = 1)]
    pub page_size: Option<u64>,
}

/// Figures by name (`messages/received`, `clients/count`, ...).
pub type Figures = BTreeMap<String, u64>;

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "/World", "payload": "hello", "qos": 1, "retain": false, "client_id": "http"}))]
pub struct PublishBody {
    /// A topic name (no wildcards).
    pub topic: String,
    #[schema(default = "")]
    pub payload: Option<String>,
    #[schema(minimum = 0, maximum = 2, default = 0)]
    pub qos: Option<u8>,
    #[schema(default = false)]
    pub retain: Option<bool>,
    /// The publisher's client id in the message, `http` if none.
    #[schema(default = "http")]
    pub client_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "/World", "qos": 1, "client_id": "mqttjs_722b4d845f"}))]
pub struct SubscribeBody {
    /// A topic filter; wildcards allowed.
    pub topic: String,
    #[schema(minimum = 0, maximum = 2, default = 0)]
    pub qos: Option<u8>,
    /// A connected client, subscribed on its node (112 if none).
    pub client_id: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "/World", "client_id": "mqttjs_722b4d845f"}))]
pub struct UnsubscribeBody {
    pub topic: String,
    pub client_id: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"topic": "/World"}))]
pub struct AclCacheBody {
    pub topic: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"active": true}))]
pub struct PluginSwitch {
    pub active: bool,
}

/// Keys and values of a plugin's config, all strings.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"module.presence": "on"}))]
pub struct PluginConfigBody(pub BTreeMap<String, String>);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"key": "mqtt.allow_anonymous", "value": "true"}))]
pub struct ConfigChange {
    pub key: String,
    pub value: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"username": "operator", "password": "a-long-passphrase", "tags": "viewer"}))]
pub struct NewUser {
    /// At most 256 bytes, no `:` or control characters.
    pub username: String,
    pub password: String,
    #[schema(default = "")]
    pub tags: Option<String>,
}

/// Tags, password, or both.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"tags": "administrator"}))]
pub struct UserChange {
    pub tags: Option<String>,
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"username": "admin", "password": "public"}))]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"old_pwd": "public", "new_pwd": "a-new-passphrase"}))]
pub struct PasswordChange {
    pub old_pwd: String,
    pub new_pwd: String,
}

/// An admin user.
#[derive(Serialize, ToSchema)]
pub struct UserRow {
    pub username: String,
    pub tags: String,
}

pub fn routes() -> Vec<Route> {
    routes![document, swagger_index, swagger_file]
}

/// The document, built once.
fn json() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

#[get("/api-docs/openapi.json")]
fn document() -> (ContentType, &'static str) {
    (ContentType::JSON, json())
}

/// Swagger UI's page: its own script and styles, plus the inline styles it sets as it renders.
#[derive(rocket::Responder)]
struct SwaggerFile {
    body: &'static [u8],
    content_type: ContentType,
    csp: Header<'static>,
}

impl SwaggerFile {
    fn new(body: &'static [u8], content_type: ContentType) -> SwaggerFile {
        let csp = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";
        SwaggerFile { body, content_type, csp: Header::new("Content-Security-Policy", csp) }
    }
}

#[get("/api-docs")]
fn swagger_index() -> SwaggerFile {
    SwaggerFile::new(include_bytes!("../../swagger-ui/index.html"), ContentType::HTML)
}

#[get("/api-docs/<name>")]
fn swagger_file(name: &str) -> Option<SwaggerFile> {
    let (body, kind): (&'static [u8], ContentType) = match name {
        "swagger-ui-bundle.js" => (include_bytes!("../../swagger-ui/swagger-ui-bundle.js"), ContentType::JavaScript),
        "swagger-ui.css" => (include_bytes!("../../swagger-ui/swagger-ui.css"), ContentType::CSS),
        "swagger-initializer.js" => {
            (include_bytes!("../../swagger-ui/swagger-initializer.js"), ContentType::JavaScript)
        }
        _ => return None,
    };
    Some(SwaggerFile::new(body, kind))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::ApiDoc;
    use utoipa::OpenApi;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    /// Does a Rocket route (`/nodes/<node>/clients/<_..>`) serve a documented path
    /// (`/nodes/{node}/clients/{clientid}`)? `<x>` takes one segment, `<_..>` the rest, at least one.
    fn serves(route: &str, documented: &str) -> bool {
        let route: Vec<&str> = route.trim_start_matches('/').split('/').collect();
        let documented: Vec<&str> = documented.trim_start_matches('/').split('/').collect();
        for (i, segment) in route.iter().enumerate() {
            if segment.ends_with("..>") {
                return documented.len() > i;
            }
            let Some(other) = documented.get(i) else { return false };
            let param = segment.starts_with('<');
            if param != other.starts_with('{') || (!param && segment != other) {
                return false;
            }
        }
        route.len() == documented.len()
    }

    /// Every route `/api/v2` mounts is in the document, and everything documented is mounted.
    #[test]
    fn the_document_covers_every_route() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let operations: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone())))
            .collect();
        let routes: Vec<(String, String)> = super::super::routes()
            .iter()
            .map(|r| (r.method.as_str().to_ascii_lowercase(), r.uri.path().to_string()))
            .collect();
        for (method, route) in &routes {
            assert!(
                operations.iter().any(|(m, p)| m == method && serves(route, p)),
                "{method} {route} is mounted but not documented"
            );
        }
        for (method, path) in &operations {
            assert!(
                routes.iter().any(|(m, r)| m == method && serves(r, path)),
                "{method} {path} is documented but not mounted"
            );
        }
        assert!(operations.len() >= routes.len(), "{} operations for {} routes", operations.len(), routes.len());
    }

    /// Each request body has an example, and it validates against its schema.
    #[test]
    fn example_bodies_validate() {
        let doc = document();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let Some(schema) = operation.pointer("/requestBody/content/application~1json/schema") else { continue };
                let root = json!({ "$ref": schema["$ref"], "components": doc["components"] });
                let name = schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
                let example = &doc["components"]["schemas"][name]["example"];
                assert!(!example.is_null(), "{method} {path}: {name} has no example");
                if let Err(e) = jsonschema::validate(&root, example) {
                    panic!("{method} {path}: the example of {name} does not validate: {e}");
                }
                // And a body missing what it requires does not.
                if let Some(required) = doc["components"]["schemas"][name]["required"].as_array() {
                    let mut lacking = example.clone();
                    lacking.as_object_mut().unwrap().remove(required[0].as_str().unwrap());
                    assert!(!jsonschema::is_valid(&root, &lacking), "{method} {path}: {name} without {}", required[0]);
                }
                checked += 1;
            }
        }
        assert!(checked >= 12, "only {checked} bodies");
    }

    #[test]
    fn routes_and_paths_match_as_rocket_does() {
        assert!(serves("/nodes/<node>/clients", "/nodes/{node}/clients"));
        assert!(serves("/clients/<_..>", "/clients/{clientid}/clean_acl_cache"));
        assert!(!serves("/clients/<_..>", "/clients"));
        assert!(!serves("/nodes/<node>/plugins", "/nodes/{node}/plugins/{name}"));
        assert!(!serves("/users", "/auth"));
    }
}
