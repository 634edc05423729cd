//! The `$SYS/brokers/{node}/...` tree: metric and stat names, and the JSON payloads of client events.

use serde::{Deserialize, Serialize};

macro_rules! names {
    ($(#[$meta:meta])* $ty:ident { $($variant:ident => $name:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ty { $($variant,)* }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];
            pub const COUNT: usize = [$($name,)*].len();

            /// The key as it appears in topics and in the API (`packets/puback/missed`).
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name,)* }
            }

            pub fn from_name(name: &str) -> Option<$ty> {
                match name { $($name => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

names! {
    /// EMQ 2.x metrics: counters since start (and one gauge, `messages/retained`).
    Metric {
        BytesReceived => "bytes/received",
        BytesSent => "bytes/sent",
        PacketsReceived => "packets/received",
        PacketsSent => "packets/sent",
        PacketsConnect => "packets/connect",
        PacketsConnack => "packets/connack",
        PacketsDisconnect => "packets/disconnect",
        PacketsPingreq => "packets/pingreq",
        PacketsPingresp => "packets/pingresp",
        PacketsSubscribe => "packets/subscribe",
        PacketsSuback => "packets/suback",
        PacketsUnsubscribe => "packets/unsubscribe",
        PacketsUnsuback => "packets/unsuback",
        PacketsPublishReceived => "packets/publish/received",
        PacketsPublishSent => "packets/publish/sent",
        PacketsPubackReceived => "packets/puback/received",
        PacketsPubackSent => "packets/puback/sent",
        PacketsPubackMissed => "packets/puback/missed",
        PacketsPubrecReceived => "packets/pubrec/received",
        PacketsPubrecSent => "packets/pubrec/sent",
        PacketsPubrecMissed => "packets/pubrec/missed",
        PacketsPubrelReceived => "packets/pubrel/received",
        PacketsPubrelSent => "packets/pubrel/sent",
        PacketsPubrelMissed => "packets/pubrel/missed",
        PacketsPubcompReceived => "packets/pubcomp/received",
        PacketsPubcompSent => "packets/pubcomp/sent",
        PacketsPubcompMissed => "packets/pubcomp/missed",
        MessagesReceived => "messages/received",
        MessagesSent => "messages/sent",
        MessagesQos0Received => "messages/qos0/received",
        MessagesQos0Sent => "messages/qos0/sent",
        MessagesQos1Received => "messages/qos1/received",
        MessagesQos1Sent => "messages/qos1/sent",
        MessagesQos2Received => "messages/qos2/received",
        MessagesQos2Sent => "messages/qos2/sent",
        MessagesQos2Dropped => "messages/qos2/dropped",
        MessagesDropped => "messages/dropped",
        MessagesRetained => "messages/retained",
    }
}

names! {
    /// EMQ 2.x stats: gauges, each published as `{name}/count` and `{name}/max` (high-water mark).
    Stat {
        Clients => "clients",
        Sessions => "sessions",
        Subscriptions => "subscriptions",
        Subscribers => "subscribers",
        Topics => "topics",
        Routes => "routes",
        Retained => "retained",
    }
}

/// Payload of `$SYS/brokers/{node}/clients/{clientid}/connected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConnected {
    pub clientid: String,
    /// `"undefined"` for a client without a username, as in EMQ.
    pub username: String,
    pub ipaddress: String,
    pub clean_sess: bool,
    pub protocol: u8,
    pub connack: u8,
    /// Seconds since the Unix epoch.
    pub ts: i64,
}

/// Payload of `$SYS/brokers/{node}/clients/{clientid}/disconnected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDisconnected {
    pub clientid: String,
    pub username: String,
    pub reason: String,
    pub ts: i64,
}

/// EMQ's uptime text: `"5 seconds"`, `"3 minutes, 32 seconds"`, `"1 hours, 2 minutes, 5 seconds"`,
/// `"2 days,3 hours, 0 minutes, 1 seconds"` (sic: EMQ puts no space after "days,").
pub fn uptime_text(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days} days,"));
    }
    if seconds >= 3600 {
        out.push_str(&format!("{hours} hours, "));
    }
    if seconds >= 60 {
        out.push_str(&format!("{minutes} minutes, "));
    }
    out.push_str(&format!("{secs} seconds"));
    out
}

/// Seconds in an uptime text: the inverse of [`uptime_text`].
pub fn uptime_seconds(uptime: &str) -> u64 {
    let mut total = 0u64;
    let mut number = 0u64;
    for word in uptime.split([' ', ',']).filter(|w| !w.is_empty()) {
        let unit = match word {
            "days" => 86_400,
            "hours" => 3600,
            "minutes" => 60,
            "seconds" => 1,
            n => {
                number = n.parse().unwrap_or(0);
                continue;
            }
        };
        total = total.saturating_add(number.saturating_mul(unit));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_formats_like_emq() {
        assert_eq!(uptime_text(5), "5 seconds");
        assert_eq!(uptime_text(212), "3 minutes, 32 seconds");
        assert_eq!(uptime_text(3725), "1 hours, 2 minutes, 5 seconds");
        assert_eq!(uptime_text(2 * 86_400 + 3 * 3600 + 1), "2 days,3 hours, 0 minutes, 1 seconds");
    }

    #[test]
    fn uptime_reads_back() {
        for seconds in [0, 5, 212, 3725, 2 * 86_400 + 3 * 3600 + 1] {
            assert_eq!(uptime_seconds(&uptime_text(seconds)), seconds);
        }
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(*m));
        }
        assert_eq!(Metric::COUNT, Metric::ALL.len());
        assert_eq!(Stat::from_name("routes"), Some(Stat::Routes));
    }
}
