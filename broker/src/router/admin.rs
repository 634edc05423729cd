//! The router's management side: listings (paged here, so a reply never carries the whole table),
//! kicking a client, clearing its ACL cache entry, and subscribing on a client's behalf. Every one
//! leaves the sidecar's own connection out.

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use midge_shared::control::{
    ClientQueue, ClientRow, Page, PageRequest, ReconQueues, RouteRow, SessionRow, SubscriptionRow,
};

use super::outbox::OutboxItem;
use super::tables::{Client, Fanout, Presence, Router};
use crate::protocol::{QoS, SubscriptionOptions};
use crate::session::{ClientId, SessionStats};

/// EMQ shows a missing username as "undefined".
fn username(client: &Client) -> String {
    client.meta.username.as_deref().unwrap_or("undefined").into()
}

/// Wall-clock milliseconds since the Unix epoch as EMQ shows a time: local, to the second.
pub fn format_time(ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().with_timezone(&chrono::Local);
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

impl Router {
    pub(super) fn list_clients(&self, page: PageRequest) -> Page<ClientRow> {
        let online = self.visible_clients().filter(|(_, c)| c.is_online()).collect();
        page_of(online, page, |(id, c)| client_row(id, c))
    }

    pub(super) fn get_client(&self, id: &str) -> Vec<ClientRow> {
        let row = self.visible_client(id).filter(|(_, c)| c.is_online());
        row.map(|(id, c)| client_row(id, c)).into_iter().collect()
    }

    pub(super) fn list_sessions(&self, page: PageRequest) -> Page<SessionRow> {
        let max_inflight = self.limits.max_inflight as u64;
        let all = self.visible_clients().collect();
        page_of(all, page, |(id, c)| session_row(id, c, max_inflight))
    }

    pub(super) fn get_session(&self, id: &str) -> Vec<SessionRow> {
        let max_inflight = self.limits.max_inflight as u64;
        let row = self.visible_client(id);
        row.map(|(id, c)| session_row(id, c, max_inflight)).into_iter().collect()
    }

    /// Rows are built for the requested window only.
    pub(super) fn list_subscriptions(&self, page: PageRequest) -> Page<SubscriptionRow> {
        let mut clients: Vec<_> = self.visible_clients().filter(|(_, c)| !c.filters.is_empty()).collect();
        clients.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let total = clients.iter().map(|(_, c)| c.filters.len()).sum();
        let window = Page::<SubscriptionRow>::window(total, page);
        let rows = clients
            .into_iter()
            .flat_map(|(id, c)| c.filters.iter().map(move |(topic, qos)| (id, topic, qos)))
            .skip(window.start)
            .take(window.len())
            .map(|(id, topic, options)| subscription_row(id, topic, options.qos))
            .collect();
        Page::new(page, total, rows)
    }

    pub(super) fn get_subscriptions(&self, id: &str) -> Vec<SubscriptionRow> {
        self.visible_client(id).map(|(id, c)| subscription_rows(id, c)).unwrap_or_default()
    }

    pub(super) fn list_routes(&self, page: PageRequest) -> Page<RouteRow> {
        let node = &self.shared.node;
        let rows = self.routes.keys().map(|topic| RouteRow { topic: topic.clone(), node: node.clone() });
        Page::of(rows, page)
    }

    pub(super) fn get_route(&self, topic: String) -> Vec<RouteRow> {
        let row = self.routes.contains_key(&topic).then(|| RouteRow { topic, node: self.shared.node.clone() });
        row.into_iter().collect()
    }

    /// Ends the client's connection; false if it is not online.
    pub(super) fn kick(&self, id: &str) -> bool {
        self.tell(id, OutboxItem::Kick)
    }

    /// Ends the client's connection as a takeover (another node has the client now).
    pub(super) fn take_over(&self, id: &str) -> bool {
        self.tell(id, OutboxItem::TakenOver)
    }

    /// Has the client forget its cached ACL decision for `topic`; false if it is not online.
    pub(super) fn clean_acl_cache(&self, id: &str, topic: &str) -> bool {
        self.tell(id, OutboxItem::CleanAclCache(topic.into()))
    }

    /// Subscribes a client (online or parked) to an already validated filter; false if there is no
    /// such client.
    pub(super) fn subscribe_for(&mut self, client_id: &str, filter: String, qos: QoS) -> bool {
        let Some((id, _)) = self.visible_client(client_id) else { return false };
        let id = id.clone();
        let (retained, _) = self.subscribe_client(&id, &[(filter, SubscriptionOptions::qos(qos))]);
        let mut fanout = Fanout::default();
        for delivery in retained {
            self.deliver(&id, delivery, &mut fanout);
        }
        true
    }

    /// False if there is no such client.
    pub(super) fn unsubscribe_for(&mut self, client_id: &str, filter: String) -> bool {
        let Some((id, _)) = self.visible_client(client_id) else { return false };
        let id: ClientId = id.clone();
        self.unsubscribe_client(&id, &[filter]);
        true
    }

    /// Sends a control message to an online client; false if it is not online. The sidecar's own
    /// connection is not there to be kicked.
    fn tell(&self, client_id: &str, item: OutboxItem) -> bool {
        match self.visible_client(client_id).map(|(_, c)| &c.presence) {
            Some(Presence::Online(outbox)) => outbox.push(item, None).is_ok(),
            _ => false,
        }
    }

    /// Every client the API shows: all but the sidecar's own connection.
    fn visible_clients(&self) -> impl Iterator<Item = (&ClientId, &Client)> {
        self.clients.iter().filter(|(_, c)| !c.meta.hidden).map(|(id, c)| (id, &**c))
    }

    fn visible_client(&self, client_id: &str) -> Option<(&ClientId, &Client)> {
        self.clients.get_key_value(client_id).filter(|(_, c)| !c.meta.hidden).map(|(id, c)| (id, &**c))
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

impl Router {
    /// Every session's queues summed, and the `top` clients by messages waiting (queued, deferred and
    /// in flight), longest first. Walks every client under the lock: for the occasional diagnostic.
    pub(super) fn queue_report(&self, top: usize) -> (ReconQueues, Vec<ClientQueue>) {
        let get = SessionStats::get;
        let mut totals = ReconQueues { mqueue: 0, inflight: 0, deferred: 0, awaiting_rel: 0 };
        let mut rows: Vec<ClientQueue> = self
            .visible_clients()
            .map(|(id, c)| {
                let s = &c.session_stats;
                let row = ClientQueue {
                    client_id: id.to_string(),
                    online: c.is_online(),
                    mqueue_len: get(&s.mqueue_len),
                    inflight_len: get(&s.inflight_len),
                    deferred_len: deferred_len(c),
                    awaiting_rel_len: get(&s.awaiting_rel_len),
                };
                totals.mqueue += row.mqueue_len;
                totals.inflight += row.inflight_len;
                totals.deferred += row.deferred_len;
                totals.awaiting_rel += row.awaiting_rel_len;
                row
            })
            .filter(|row| row.mqueue_len + row.deferred_len + row.inflight_len > 0)
            .collect();
        let waiting = |r: &ClientQueue| r.mqueue_len + r.deferred_len + r.inflight_len;
        rows.sort_unstable_by(|a, b| waiting(b).cmp(&waiting(a)).then_with(|| a.client_id.cmp(&b.client_id)));
        rows.truncate(top);
        (totals, rows)
    }
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
        connected_at: format_time(c.meta.connected_at),
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
        created_at: format_time(c.created_at),
        expiry_interval: (c.meta.proto_ver == 5).then(|| {
            let expiry = match &c.presence {
                Presence::Online(_) => c.meta.expiry,
                Presence::Offline(session, _) => session.expiry,
            };
            expiry.map_or(u32::MAX.into(), |e| e.as_secs())
        }),
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
    c.filters.iter().map(|(topic, options)| subscription_row(id, topic, options.qos)).collect()
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
