//! The router's management side: listings (paged here, so a reply never carries the whole table),
//! kicking a client, clearing its ACL cache entry, and subscribing on a client's behalf.

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use midge_shared::control::{ClientRow, Page, PageRequest, RouteRow, SessionRow, SubscriptionRow};
use tokio::sync::oneshot;

use super::outbox::Outbound;
use super::{Client, Presence, Router};
use crate::protocol::QoS;
use crate::session::{ClientId, SessionStats};

type Reply<T> = oneshot::Sender<T>;

#[derive(Debug)]
pub enum AdminRequest {
    ListClients(PageRequest, Reply<Page<ClientRow>>),
    GetClient(String, Reply<Vec<ClientRow>>),
    ListSessions(PageRequest, Reply<Page<SessionRow>>),
    GetSession(String, Reply<Vec<SessionRow>>),
    ListSubscriptions(PageRequest, Reply<Page<SubscriptionRow>>),
    GetSubscriptions(String, Reply<Vec<SubscriptionRow>>),
    ListRoutes(PageRequest, Reply<Page<RouteRow>>),
    GetRoute(String, Reply<Vec<RouteRow>>),
    /// Answers whether the client was online.
    Kick(String, Reply<bool>),
    /// Answers whether the client was online.
    CleanAclCache {
        client_id: String,
        topic: String,
        reply: Reply<bool>,
    },
    /// Answers whether the client exists. The filter is already validated.
    Subscribe {
        client_id: String,
        filter: String,
        qos: QoS,
        reply: Reply<bool>,
    },
    /// Answers whether the client exists.
    Unsubscribe {
        client_id: String,
        filter: String,
        reply: Reply<bool>,
    },
}

/// EMQ shows a missing username as "undefined".
fn username(client: &Client) -> String {
    client.meta.username.clone().unwrap_or_else(|| "undefined".into())
}

pub fn format_time(t: &chrono::DateTime<chrono::Local>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

impl Router {
    pub(super) fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::ListClients(page, reply) => {
                let online = self.visible_clients().filter(|(_, c)| is_online(c)).collect();
                let _ = reply.send(page_of(online, page, |(id, c)| client_row(id, c)));
            }
            AdminRequest::GetClient(id, reply) => {
                let row = self.visible_client(&id).filter(|(_, c)| is_online(c));
                let _ = reply.send(row.map(|(id, c)| client_row(id, c)).into_iter().collect());
            }
            AdminRequest::ListSessions(page, reply) => {
                let max_inflight = self.limits.max_inflight as u64;
                let all = self.visible_clients().collect();
                let _ = reply.send(page_of(all, page, |(id, c)| session_row(id, c, max_inflight)));
            }
            AdminRequest::GetSession(id, reply) => {
                let max_inflight = self.limits.max_inflight as u64;
                let row = self.visible_client(&id);
                let _ = reply.send(row.map(|(id, c)| session_row(id, c, max_inflight)).into_iter().collect());
            }
            AdminRequest::ListSubscriptions(page, reply) => {
                // Rows are built for the requested window only.
                let mut clients: Vec<_> = self.visible_clients().filter(|(_, c)| !c.filters.is_empty()).collect();
                clients.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let total = clients.iter().map(|(_, c)| c.filters.len()).sum();
                let window = Page::<SubscriptionRow>::window(total, page);
                let rows = clients
                    .into_iter()
                    .flat_map(|(id, c)| c.filters.iter().map(move |(topic, qos)| (id, topic, qos)))
                    .skip(window.start)
                    .take(window.len())
                    .map(|(id, topic, qos)| subscription_row(id, topic, *qos))
                    .collect();
                let _ = reply.send(Page::new(page, total, rows));
            }
            AdminRequest::GetSubscriptions(id, reply) => {
                let rows = self.visible_client(&id).map(|(id, c)| subscription_rows(id, c));
                let _ = reply.send(rows.unwrap_or_default());
            }
            AdminRequest::ListRoutes(page, reply) => {
                let node = &self.shared.node;
                let rows = self.routes.keys().map(|topic| RouteRow { topic: topic.clone(), node: node.clone() });
                let _ = reply.send(Page::of(rows, page));
            }
            AdminRequest::GetRoute(topic, reply) => {
                let row = self.routes.contains_key(&topic).then(|| RouteRow { topic, node: self.shared.node.clone() });
                let _ = reply.send(row.into_iter().collect());
            }
            AdminRequest::Kick(id, reply) => {
                let _ = reply.send(self.tell(&id, Outbound::Kick));
            }
            AdminRequest::CleanAclCache { client_id, topic, reply } => {
                let _ = reply.send(self.tell(&client_id, Outbound::CleanAclCache(topic.into())));
            }
            AdminRequest::Subscribe { client_id, filter, qos, reply } => {
                let Some((id, _)) = self.visible_client(&client_id) else {
                    let _ = reply.send(false);
                    return;
                };
                let id = id.clone();
                let retained = self.subscribe_client(&id, &[(filter, qos)]);
                for delivery in retained {
                    self.deliver(&id, delivery);
                }
                let _ = reply.send(true);
            }
            AdminRequest::Unsubscribe { client_id, filter, reply } => {
                let Some((id, _)) = self.visible_client(&client_id) else {
                    let _ = reply.send(false);
                    return;
                };
                let id: ClientId = id.clone();
                self.unsubscribe_client(&id, &[filter]);
                let _ = reply.send(true);
            }
        }
    }

    /// Sends a control message to an online client; false if it is not online. The sidecar's own
    /// connection is not there to be kicked.
    fn tell(&self, client_id: &str, outbound: Outbound) -> bool {
        match self.visible_client(client_id).map(|(_, c)| &c.presence) {
            Some(Presence::Online(outbox)) => outbox.push(outbound, None).is_ok(),
            _ => false,
        }
    }

    /// Every client the API shows: all but the sidecar's own connection.
    fn visible_clients(&self) -> impl Iterator<Item = (&ClientId, &Client)> {
        self.clients.iter().filter(|(_, c)| !c.meta.hidden)
    }

    fn visible_client(&self, client_id: &str) -> Option<(&ClientId, &Client)> {
        self.clients.get_key_value(client_id).filter(|(_, c)| !c.meta.hidden)
    }
}

/// Page `request` of `clients` in client id order, with rows built for that page alone. Listings run
/// under the router's lock, on the threads that also serve connections: for a large table, sorting it
/// whole and formatting every row for each page would stall them.
fn page_of<'a, Row>(
    mut clients: Vec<(&'a ClientId, &'a Client)>,
    request: PageRequest,
    row: impl Fn((&'a ClientId, &'a Client)) -> Row,
) -> Page<Row> {
    let total = clients.len();
    let window = Page::<Row>::window(total, request);
    let rows = select_window(&mut clients, window, |a, b| a.0.cmp(b.0)).iter().map(|&c| row(c)).collect();
    Page::new(request, total, rows)
}

/// The items that would sit at `window` if `items` were sorted, themselves sorted: linear on average,
/// where a full sort is not.
fn select_window<T>(items: &mut [T], window: Range<usize>, order: impl Fn(&T, &T) -> Ordering + Copy) -> &mut [T] {
    if window.is_empty() {
        return &mut [];
    }
    items.select_nth_unstable_by(window.start, order);
    let rest = &mut items[window.start..];
    if window.len() < rest.len() {
        rest.select_nth_unstable_by(window.len() - 1, order);
    }
    let page = &mut rest[..window.len()];
    page.sort_unstable_by(order);
    page
}

fn is_online(client: &Client) -> bool {
    matches!(client.presence, Presence::Online(_))
}

fn client_row(id: &Arc<str>, c: &Client) -> ClientRow {
    ClientRow {
        client_id: id.to_string(),
        username: username(c),
        ipaddress: c.meta.peer.ip().to_string(),
        port: c.meta.peer.port(),
        clean_sess: c.meta.clean_session,
        proto_ver: c.meta.proto_ver,
        keepalive: c.meta.keepalive,
        connected_at: format_time(&c.meta.connected_at),
    }
}

fn session_row(id: &Arc<str>, c: &Client, max_inflight: u64) -> SessionRow {
    let s = &c.session_stats;
    let get = SessionStats::get;
    SessionRow {
        client_id: id.to_string(),
        clean_sess: c.session_clean,
        subscriptions: c.filters.len() as u64,
        max_inflight,
        inflight_len: get(&s.inflight_len),
        mqueue_len: get(&s.mqueue_len) + deferred_len(c),
        mqueue_dropped: get(&s.mqueue_dropped),
        awaiting_rel_len: get(&s.awaiting_rel_len),
        deliver_msg: get(&s.deliver_msg),
        enqueue_msg: get(&s.enqueue_msg),
        created_at: format_time(&c.created_at),
    }
}

/// Deliveries for a stalled connection that wait in its outbox rather than its session's queue.
fn deferred_len(c: &Client) -> u64 {
    match &c.presence {
        Presence::Online(outbox) => outbox.deferred_len() as u64,
        Presence::Offline(..) => 0,
    }
}

fn subscription_rows(id: &Arc<str>, c: &Client) -> Vec<SubscriptionRow> {
    c.filters.iter().map(|(topic, qos)| subscription_row(id, topic, *qos)).collect()
}

fn subscription_row(id: &Arc<str>, topic: &str, qos: QoS) -> SubscriptionRow {
    SubscriptionRow { client_id: id.to_string(), topic: topic.to_string(), qos: qos as u8 }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any page of any listing is what sorting the whole listing and cutting the page would give.
        #[test]
        fn a_selected_window_is_that_window_of_the_sorted_items(
            mut items in proptest::collection::vec(0u16..500, 0..300),
            page in 0u64..12,
            size in 0u64..40,
        ) {
            let request = PageRequest { page, size };
            let window = Page::<u16>::window(items.len(), request);
            let mut sorted = items.clone();
            sorted.sort_unstable();
            let expected = sorted[window.clone()].to_vec();
            prop_assert_eq!(select_window(&mut items, window, |a, b| a.cmp(b)).to_vec(), expected);
        }
    }
}
