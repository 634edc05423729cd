//! The control channel: requests from the sidecar to a broker node and the broker's replies, carried as
//! JSON over MQTT on topics that only the management principal may use.
//!
//! Request: `{"v":1,"id":"…","reply_to":"$midge/ctl/reply/mgmt-1","cmd":"list_clients","args":{…}}`
//! Reply:   `{"v":1,"id":"…","ok":…}` or `{"v":1,"id":"…","err":{"code":112,"message":"client not online"}}`
//! Error codes are the management API's own, so the sidecar passes them through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The newest version of this contract that this build speaks. A request carries the version it is
/// written in; a node answers every version from [`OLDEST_VERSION`] to its own `VERSION`, and tells its
/// own in its node info (`control_version`), so a newer sidecar asks an older node only what that node
/// knows (each request has the version that introduced it: `Request::since`).
pub const VERSION: u32 = 3;

/// The oldest version of this contract that this build still answers.
pub const OLDEST_VERSION: u32 = 1;

/// The shortest management secret either side accepts: an empty or shorter one would let anyone who
/// guesses it (or sends no password at all) run the broker. Shorter means no control channel.
pub const MIN_SECRET_LEN: usize = 16;

/// Every control topic starts with this; nobody but the management principal may touch it.
pub const PREFIX: &str = "$midge/";

/// The management principal's client ids start with this. Only its connections may use such an id, and
/// only such an id may it use: so nobody else can hold or take over the sidecar's session, and the broker
/// knows its connection by its id alone (to keep it out of every listing and statistic).
pub const CLIENT_ID_PREFIX: &str = "midge-mgmt-";

/// Is this client id in the management principal's namespace?
pub fn is_management_client_id(client_id: &str) -> bool {
    client_id.starts_with(CLIENT_ID_PREFIX)
}

/// Where a node takes requests.
pub fn request_topic(node: &str) -> String {
    format!("$midge/ctl/{node}/req")
}

/// Where every node takes requests: the sidecar asks here who is there (node info), and each node
/// answers for itself.
pub const DISCOVERY_TOPIC: &str = "$midge/ctl/discover";

/// Where a requester takes its replies.
pub fn reply_topic(requester: &str) -> String {
    format!("$midge/ctl/reply/{requester}")
}

/// Is this a control topic (requests, replies, anything under the prefix)?
pub fn is_control_topic(topic: &str) -> bool {
    topic.starts_with(PREFIX)
}

/// The node named by a request topic.
pub fn request_node(topic: &str) -> Option<&str> {
    topic.strip_prefix("$midge/ctl/")?.strip_suffix("/req")
}

/// Error codes of the management API that the broker can answer with.
pub mod code {
    pub const BADRPC: u16 = 101;
    pub const UNKNOWN: u16 = 102;
    pub const MISSING_PARAMETER: u16 = 107;
    pub const WRONG_TYPE: u16 = 108;
    pub const PLUGIN_ACTIVE: u16 = 110;
    pub const PLUGIN_INACTIVE: u16 = 111;
    pub const CLIENT_OFFLINE: u16 = 112;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub v: u32,
    pub id: String,
    pub reply_to: String,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub page: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// → `NodeInfo`
    NodeInfo,
    /// → `Page<ClientRow>`
    ListClients(PageRequest),
    /// → `Vec<ClientRow>` (empty or one)
    GetClient { client_id: String },
    /// → `Page<SessionRow>`
    ListSessions(PageRequest),
    /// → `Vec<SessionRow>`
    GetSession { client_id: String },
    /// → `Page<SubscriptionRow>`
    ListSubscriptions(PageRequest),
    /// → `Vec<SubscriptionRow>`
    GetSubscriptions { client_id: String },
    /// → `Page<RouteRow>`
    ListRoutes(PageRequest),
    /// → `Vec<RouteRow>`
    GetRoute { topic: String },
    /// → `Recon`, or 111 while `emq_recon` is off
    Recon { top: u64 },
    /// → `()`, or 112
    Kick { client_id: String },
    /// → `()`, or 112
    CleanAclCache { client_id: String, topic: String },
    /// → `()`, or 102 for an invalid topic
    Publish { topic: String, payload: String, qos: u8, retain: bool, client_id: String },
    /// → `()`, or 102 for an invalid filter or unknown client
    Subscribe { client_id: String, topic: String, qos: u8 },
    /// → `()`, or 102
    Unsubscribe { client_id: String, topic: String },
    /// → `Vec<PluginRow>`
    ListPlugins,
    /// → `()`, or 110/111
    SetPlugin { name: String, active: bool },
    /// → `Vec<ConfigRow>`
    ListConfigs,
    /// → `()`, or 102
    SetConfig { app: String, key: String, value: String },
    /// → `Vec<PluginConfigRow>`
    GetPluginConfig { name: String },
    /// → `()`, or 102
    SetPluginConfig { name: String, values: BTreeMap<String, String> },
    /// → `Vec<ListenerRow>`
    ListListeners,
    /// → `BTreeMap<String, u64>`
    Metrics,
    /// → `BTreeMap<String, u64>`
    Stats,
    /// → the number of TLS listeners reloaded, or 102 naming those whose files did not load (since v2)
    ReloadCertificates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub v: u32,
    pub id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(serde_json::Value),
    Err(ControlError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    pub code: u16,
    pub message: String,
}

impl ControlError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ControlError { code, message: message.into() }
    }
}

/// A page of a listing, in the API's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub current_page: u64,
    pub page_size: u64,
    pub total_num: u64,
    pub total_page: u64,
    pub objects: Vec<T>,
}

impl<T> Page<T> {
    /// Cuts page `page` (from 1) of `size` out of the whole, ordered listing.
    pub fn of(all: impl ExactSizeIterator<Item = T>, request: PageRequest) -> Page<T> {
        let total = all.len();
        let window = Page::<T>::window(total, request);
        Page::new(request, total, all.skip(window.start).take(window.len()).collect())
    }

    /// Which of `total` ordered items page `request` holds.
    pub fn window(total: usize, request: PageRequest) -> std::ops::Range<usize> {
        let size = request.size.max(1);
        let skip = request.page.saturating_sub(1).saturating_mul(size).min(total as u64);
        skip as usize..skip.saturating_add(size).min(total as u64) as usize
    }

    /// The page `request` asked for, holding `objects` (its window of `total` items).
    pub fn new(request: PageRequest, total: usize, objects: Vec<T>) -> Page<T> {
        let size = request.size.max(1);
        Page {
            current_page: request.page,
            page_size: size,
            total_num: total as u64,
            total_page: (total as u64).div_ceil(size),
            objects,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub version: String,
    pub sysdescr: String,
    pub uptime: String,
    pub datetime: String,
    pub otp_release: String,
    pub node_status: String,
    pub memory_total: String,
    pub memory_used: String,
    pub process_available: u64,
    pub process_used: u64,
    pub max_fds: u64,
    pub clients: u64,
    pub load1: String,
    pub load5: String,
    pub load15: String,
    /// The newest control protocol version the node speaks (absent from nodes older than the field: 1).
    #[serde(default = "first_version")]
    pub control_version: u32,
}

fn first_version() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientRow {
    pub client_id: String,
    pub username: String,
    pub ipaddress: String,
    pub port: u16,
    pub clean_sess: bool,
    pub proto_ver: u8,
    pub keepalive: u16,
    pub connected_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionRow {
    pub client_id: String,
    pub clean_sess: bool,
    pub subscriptions: u64,
    pub max_inflight: u64,
    pub inflight_len: u64,
    pub mqueue_len: u64,
    pub mqueue_dropped: u64,
    pub awaiting_rel_len: u64,
    pub deliver_msg: u64,
    pub enqueue_msg: u64,
    pub created_at: String,
    /// Seconds the session outlives its connection (4294967295: for ever); MQTT 5 sessions only, as
    /// EMQ 2.x, which has no MQTT 5, shows no such field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_interval: Option<u64>,
}

/// A node's runtime diagnostics (`emq_recon`): where its memory is and which queues are long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Recon {
    pub memory: ReconMemory,
    pub runtime: ReconRuntime,
    pub connections: ReconConnections,
    pub queues: ReconQueues,
    /// The clients with the most messages waiting, longest first.
    pub top_queues: Vec<ClientQueue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconMemory {
    /// Resident set of the process.
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    /// The allocator's view (glibc's `mallinfo2`): in use by the program, held but free, and taken
    /// from the system in all; absent where the allocator does not tell.
    pub heap_in_use_bytes: Option<u64>,
    pub heap_free_bytes: Option<u64>,
    pub heap_total_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconRuntime {
    pub workers: u64,
    /// Tasks alive now: roughly one per connection, plus the broker's own.
    pub tasks: u64,
    /// Tasks waiting in the runtime's shared queue to be run.
    pub global_queue_depth: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconConnections {
    pub count: u64,
    /// What one connection's task takes before its buffers (its future, fixed at build time).
    pub task_bytes: u64,
    /// Of `count`, those idle long enough to wait without a task (`dormant_after_ms`).
    #[serde(default)]
    pub dormant: u64,
    /// The process's memory beyond what it held with no connection, divided by the connections: an
    /// estimate of a connection's whole cost; absent without connections.
    pub estimated_bytes_each: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconQueues {
    /// Messages queued in sessions, online or parked.
    pub mqueue: u64,
    /// Messages sent and not yet acknowledged.
    pub inflight: u64,
    /// Messages waiting in connections' outboxes for a full window to open.
    pub deferred: u64,
    /// Incoming QoS 2 messages awaiting PUBREL.
    pub awaiting_rel: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientQueue {
    pub client_id: String,
    pub online: bool,
    pub mqueue_len: u64,
    pub inflight_len: u64,
    pub deferred_len: u64,
    pub awaiting_rel_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriptionRow {
    pub client_id: String,
    pub topic: String,
    pub qos: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteRow {
    pub topic: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginRow {
    pub name: String,
    pub version: String,
    pub description: String,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigRow {
    pub key: String,
    pub value: String,
    /// Spelt as in EMQ's API.
    pub datatpye: String,
    pub app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginConfigRow {
    pub key: String,
    pub value: String,
    pub desc: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListenerRow {
    pub protocol: String,
    pub listen: String,
    pub acceptors: u64,
    pub max_clients: u64,
    pub current_clients: u64,
    pub shutdown_count: ShutdownCounts,
}

/// Connections a listener shut, by reason (`{"closed": 3, "maxlimit": 1}`). EMQ renders none as `[]`,
/// and so does this, so scripts that test for an empty list keep working; either shape is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownCounts(pub BTreeMap<String, u64>);

/// `[]` when none, else an object of counts by reason.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ShutdownCounts {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let none = ArrayBuilder::new().items(ObjectBuilder::new()).max_items(Some(0));
        let counts = ObjectBuilder::new()
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))));
        OneOfBuilder::new().item(none).item(counts).into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ShutdownCounts {}

impl Serialize for ShutdownCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            [(); 0].serialize(serializer)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ShutdownCounts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Counts(BTreeMap<String, u64>),
            Empty([(); 0]),
        }
        Ok(match Shape::deserialize(deserializer)? {
            Shape::Counts(counts) => ShutdownCounts(counts),
            Shape::Empty(_) => ShutdownCounts::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_counts_are_an_empty_list_or_an_object() {
        let none = ShutdownCounts::default();
        assert_eq!(serde_json::to_string(&none).unwrap(), "[]");
        assert_eq!(serde_json::from_str::<ShutdownCounts>("[]").unwrap(), none);
        let some = ShutdownCounts(BTreeMap::from([("closed".to_string(), 2), ("maxlimit".to_string(), 1)]));
        let json = serde_json::to_string(&some).unwrap();
        assert_eq!(json, r#"{"closed":2,"maxlimit":1}"#);
        assert_eq!(serde_json::from_str::<ShutdownCounts>(&json).unwrap(), some);
        assert!(serde_json::from_str::<ShutdownCounts>("[1]").is_err());
    }

    #[test]
    fn envelope_shape() {
        let req = RequestEnvelope {
            v: 1,
            id: "7f3c".into(),
            reply_to: reply_topic("mgmt-1"),
            request: Request::ListClients(PageRequest { page: 1, size: 20 }),
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v":1,"id":"7f3c","reply_to":"$midge/ctl/reply/mgmt-1","cmd":"list_clients","args":{"page":1,"size":20}})
        );
        let back: RequestEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
        let unit: RequestEnvelope =
            serde_json::from_str(r#"{"v":1,"id":"x","reply_to":"r","cmd":"node_info"}"#).unwrap();
        assert_eq!(unit.request, Request::NodeInfo);

        let err =
            ReplyEnvelope { v: 1, id: "x".into(), outcome: Outcome::Err(ControlError::new(112, "client not online")) };
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"v":1,"id":"x","err":{"code":112,"message":"client not online"}})
        );
        let ok: ReplyEnvelope = serde_json::from_str(r#"{"v":1,"id":"x","ok":[]}"#).unwrap();
        assert_eq!(ok.outcome, Outcome::Ok(serde_json::json!([])));
    }

    #[test]
    fn paging_arithmetic() {
        let page = Page::of(1..46u32, PageRequest { page: 3, size: 20 });
        assert_eq!((page.total_num, page.total_page, page.objects.len()), (45, 3, 5));
        let past = Page::of(1..46u32, PageRequest { page: 9, size: 20 });
        assert!(past.objects.is_empty());
        let empty = Page::of(std::iter::empty::<u32>(), PageRequest { page: 1, size: 20 });
        assert_eq!((empty.total_num, empty.total_page), (0, 0));
    }

    #[test]
    fn topics() {
        assert_eq!(request_node(&request_topic("midge@127.0.0.1")), Some("midge@127.0.0.1"));
        assert!(is_control_topic(&reply_topic("m")));
        assert!(!is_control_topic("$SYS/brokers"));
    }
}
