//! Every control request with the type of its reply, in one list that both sides compile against.
//!
//! The broker implements [`Handler`], one method per request with its reply type, and answers through
//! [`dispatch`]; the sidecar builds requests with the constructors on [`Request`] (`Request::list_clients`),
//! each a [`Call`] that knows its reply type, and reads the reply as that type. A request whose reply
//! the two sides disagree on does not compile, on either side. On the wire nothing changes: the reply is
//! the JSON of the reply type, as before.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::control::*;

/// The answer to a command that has nothing to say but that it was done: EMQ's `[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done;

impl Serialize for Done {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        <[(); 0]>::serialize(&[], serializer)
    }
}

impl<'de> Deserialize<'de> for Done {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Done)
    }
}

/// A request, typed by its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Call<Reply> {
    pub request: Request,
    /// The control protocol version that introduced this request: a node speaking an older one is not
    /// asked.
    pub since: u32,
    reply: PhantomData<fn() -> Reply>,
}

impl<Reply: DeserializeOwned> Call<Reply> {
    fn new(request: Request, since: u32) -> Self {
        Call { request, since, reply: PhantomData }
    }

    /// Reads a reply to this request.
    pub fn reply(&self, value: serde_json::Value) -> Result<Reply, serde_json::Error> {
        serde_json::from_value(value)
    }
}

fn to_value(reply: impl Serialize) -> Result<serde_json::Value, ControlError> {
    serde_json::to_value(reply).map_err(|e| ControlError::new(code::UNKNOWN, e.to_string()))
}

/// Defines, from one list, the [`Handler`] the broker implements, [`dispatch`], and the typed
/// constructors the sidecar calls. Each entry's shape is a pattern of [`Request`] binding exactly the
/// method's arguments, so it serves both as the match arm and as the constructor's expression.
macro_rules! calls {
    ($( $(#[$doc:meta])* $method:ident($($arg:ident: $ty:ty),*) -> $reply:ty = [$($shape:tt)+] since $since:literal; )*) => {
        /// What a node does for each request; implemented by the broker.
        pub trait Handler: Sync {
            $(
                $(#[$doc])*
                fn $method(&self, $($arg: $ty),*) -> impl Future<Output = Result<$reply, ControlError>> + Send;
            )*
        }

        /// Runs `request` on `handler`, the reply as JSON.
        pub async fn dispatch<H: Handler>(handler: &H, request: Request) -> Result<serde_json::Value, ControlError> {
            match request {
                $( $($shape)+ => to_value(handler.$method($($arg),*).await?), )*
            }
        }

        impl Request {
            $(
                $(#[$doc])*
                pub fn $method($($arg: $ty),*) -> Call<$reply> {
                    Call::new($($shape)+, $since)
                }
            )*

            /// The control protocol version that introduced this request.
            pub fn since(&self) -> u32 {
                match self {
                    $( #[allow(unused_variables)] $($shape)+ => $since, )*
                }
            }
        }
    };
}

calls! {
    /// The node's facts (name, version, uptime, memory, load, control version).
    node_info() -> NodeInfo = [Request::NodeInfo] since 1;
    /// A page of the connected clients, by client id.
    list_clients(page: PageRequest) -> Page<ClientRow> = [Request::ListClients(page)] since 1;
    /// The client, if it is connected here: empty or one row.
    get_client(client_id: String) -> Vec<ClientRow> = [Request::GetClient { client_id }] since 1;
    /// A page of the sessions, by client id.
    list_sessions(page: PageRequest) -> Page<SessionRow> = [Request::ListSessions(page)] since 1;
    get_session(client_id: String) -> Vec<SessionRow> = [Request::GetSession { client_id }] since 1;
    /// A page of the subscriptions, by client id and topic.
    list_subscriptions(page: PageRequest) -> Page<SubscriptionRow> = [Request::ListSubscriptions(page)] since 1;
    get_subscriptions(client_id: String) -> Vec<SubscriptionRow> = [Request::GetSubscriptions { client_id }] since 1;
    /// A page of the routes (distinct filters), by topic.
    list_routes(page: PageRequest) -> Page<RouteRow> = [Request::ListRoutes(page)] since 1;
    get_route(topic: String) -> Vec<RouteRow> = [Request::GetRoute { topic }] since 1;
    /// 112 if the client is not connected here.
    kick(client_id: String) -> Done = [Request::Kick { client_id }] since 1;
    /// 112 if the client is not connected here.
    clean_acl_cache(client_id: String, topic: String) -> Done = [Request::CleanAclCache { client_id, topic }] since 1;
    /// 102 for an invalid or broker-owned topic.
    publish(topic: String, payload: String, qos: u8, retain: bool, client_id: String) -> Done
        = [Request::Publish { topic, payload, qos, retain, client_id }] since 1;
    /// 102 for an invalid filter, one reaching broker-owned topics, or an unknown client.
    subscribe(client_id: String, topic: String, qos: u8) -> Done = [Request::Subscribe { client_id, topic, qos }] since 1;
    /// 102 for an unknown client.
    unsubscribe(client_id: String, topic: String) -> Done = [Request::Unsubscribe { client_id, topic }] since 1;
    list_plugins() -> Vec<PluginRow> = [Request::ListPlugins] since 1;
    /// 110 or 111 if the plugin is already in that state.
    set_plugin(name: String, active: bool) -> Done = [Request::SetPlugin { name, active }] since 1;
    list_configs() -> Vec<ConfigRow> = [Request::ListConfigs] since 1;
    /// 102 for an unknown key or a value it does not take.
    set_config(app: String, key: String, value: String) -> Done = [Request::SetConfig { app, key, value }] since 1;
    get_plugin_config(name: String) -> Vec<PluginConfigRow> = [Request::GetPluginConfig { name }] since 1;
    /// 102 for an unknown plugin or key.
    set_plugin_config(name: String, values: BTreeMap<String, String>) -> Done
        = [Request::SetPluginConfig { name, values }] since 1;
    list_listeners() -> Vec<ListenerRow> = [Request::ListListeners] since 1;
    /// Every metric by name.
    metrics() -> BTreeMap<String, u64> = [Request::Metrics] since 1;
    /// Every stat by name (`clients/count`, `clients/max`, ...).
    stats() -> BTreeMap<String, u64> = [Request::Stats] since 1;
    /// Reads every TLS listener's certificate files again; connections already up keep theirs.
    reload_certificates() -> u64 = [Request::ReloadCertificates] since 2;
    /// Runtime diagnostics, with the `top` clients by queue; 111 while `emq_recon` is off.
    recon(top: u64) -> Recon = [Request::Recon { top }] since 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_build_the_wire_requests() {
        let call = Request::list_clients(PageRequest { page: 2, size: 5 });
        assert_eq!(call.request, Request::ListClients(PageRequest { page: 2, size: 5 }));
        assert_eq!((call.since, call.request.since()), (1, 1));
        let call = Request::kick("c".into());
        assert_eq!(call.request, Request::Kick { client_id: "c".into() });
        assert_eq!(call.reply(serde_json::json!([])).unwrap(), Done);
        assert_eq!(serde_json::to_value(Done).unwrap(), serde_json::json!([]));
    }

    struct Node;

    impl Handler for Node {
        async fn node_info(&self) -> Result<NodeInfo, ControlError> {
            Err(ControlError::new(code::UNKNOWN, "not in this test"))
        }
        async fn list_clients(&self, page: PageRequest) -> Result<Page<ClientRow>, ControlError> {
            Ok(Page::new(page, 0, vec![]))
        }
        async fn get_client(&self, _: String) -> Result<Vec<ClientRow>, ControlError> {
            Ok(vec![])
        }
        async fn list_sessions(&self, page: PageRequest) -> Result<Page<SessionRow>, ControlError> {
            Ok(Page::new(page, 0, vec![]))
        }
        async fn get_session(&self, _: String) -> Result<Vec<SessionRow>, ControlError> {
            Ok(vec![])
        }
        async fn list_subscriptions(&self, page: PageRequest) -> Result<Page<SubscriptionRow>, ControlError> {
            Ok(Page::new(page, 0, vec![]))
        }
        async fn get_subscriptions(&self, _: String) -> Result<Vec<SubscriptionRow>, ControlError> {
            Ok(vec![])
        }
        async fn list_routes(&self, page: PageRequest) -> Result<Page<RouteRow>, ControlError> {
            Ok(Page::new(page, 0, vec![]))
        }
        async fn get_route(&self, _: String) -> Result<Vec<RouteRow>, ControlError> {
            Ok(vec![])
        }
        async fn kick(&self, _: String) -> Result<Done, ControlError> {
            Err(ControlError::new(code::CLIENT_OFFLINE, "client not online"))
        }
        async fn clean_acl_cache(&self, _: String, _: String) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn publish(&self, _: String, _: String, _: u8, _: bool, _: String) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn subscribe(&self, _: String, _: String, _: u8) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn unsubscribe(&self, _: String, _: String) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn list_plugins(&self) -> Result<Vec<PluginRow>, ControlError> {
            Ok(vec![])
        }
        async fn set_plugin(&self, _: String, _: bool) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn list_configs(&self) -> Result<Vec<ConfigRow>, ControlError> {
            Ok(vec![])
        }
        async fn set_config(&self, _: String, _: String, _: String) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn get_plugin_config(&self, _: String) -> Result<Vec<PluginConfigRow>, ControlError> {
            Ok(vec![])
        }
        async fn set_plugin_config(&self, _: String, _: BTreeMap<String, String>) -> Result<Done, ControlError> {
            Ok(Done)
        }
        async fn list_listeners(&self) -> Result<Vec<ListenerRow>, ControlError> {
            Ok(vec![])
        }
        async fn reload_certificates(&self) -> Result<u64, ControlError> {
            Ok(0)
        }
        async fn metrics(&self) -> Result<BTreeMap<String, u64>, ControlError> {
            Ok(BTreeMap::from([("messages/sent".to_string(), 3)]))
        }
        async fn recon(&self, _: u64) -> Result<Recon, ControlError> {
            Err(ControlError::new(code::PLUGIN_INACTIVE, "off"))
        }

        async fn stats(&self) -> Result<BTreeMap<String, u64>, ControlError> {
            Ok(BTreeMap::new())
        }
    }

    /// The dispatcher answers each request with its handler method's reply, as the constructor's
    /// [`Call`] reads it back.
    #[test]
    fn dispatch_and_call_agree_on_the_reply() {
        let runtime = tokio_free_block_on;
        let call = Request::metrics();
        let value = runtime(dispatch(&Node, call.request.clone())).unwrap();
        assert_eq!(call.reply(value).unwrap()["messages/sent"], 3);
        let kick = runtime(dispatch(&Node, Request::kick("x".into()).request)).unwrap_err();
        assert_eq!(kick.code, code::CLIENT_OFFLINE);
        let page = Request::list_clients(PageRequest { page: 1, size: 20 });
        let value = runtime(dispatch(&Node, page.request.clone())).unwrap();
        assert_eq!(page.reply(value).unwrap().total_page, 0);
    }

    /// Polls a future that never waits (the handler above answers at once) to its end.
    fn tokio_free_block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }
}
