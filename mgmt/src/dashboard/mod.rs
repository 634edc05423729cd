//! `emq_dashboard`: the web dashboard, a page of plain HTML, CSS and JavaScript compiled into the
//! binary, which drives the same `/api/v2` as every other client.
//!
//! It is served at `/` of the API port and on a port of its own (18083, as EMQ's), both while the
//! plugin is on. The broker keeps the plugin's state like any other plugin's (listed, switched and
//! restored per node); [`switch`] follows it and opens or closes the dashboard's port.

mod assets;
mod switch;

use rocket::http::{ContentType, Header};
use rocket::{get, routes, Route, State};

pub use switch::{follow, serve, Dashboard, PLUGIN};

pub fn routes() -> Vec<Route> {
    routes![index, asset]
}

/// A dashboard file, with the headers that keep the page to itself: no framing, no sniffing, and
/// scripts, styles and connections only from where it came (and the broker's WebSocket listener).
#[derive(rocket::Responder)]
struct Asset {
    body: &'static [u8],
    content_type: ContentType,
    cache: Header<'static>,
    csp: Header<'static>,
    frame: Header<'static>,
    sniff: Header<'static>,
    referrer: Header<'static>,
}

impl Asset {
    fn new(file: &assets::File) -> Asset {
        Asset {
            body: file.body,
            content_type: file.content_type.clone(),
            // Embedded files change with the binary: revalidate rather than keep a stale page.
            cache: Header::new("Cache-Control", "no-cache"),
            csp: Header::new(
                "Content-Security-Policy",
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
            ),
            frame: Header::new("X-Frame-Options", "DENY"),
            sniff: Header::new("X-Content-Type-Options", "nosniff"),
            referrer: Header::new("Referrer-Policy", "no-referrer"),
        }
    }
}

#[get("/")]
fn index(dashboard: &State<std::sync::Arc<Dashboard>>) -> Option<Asset> {
    dashboard.is_active().then(|| Asset::new(&assets::INDEX))
}

#[get("/dashboard/<name>")]
fn asset(dashboard: &State<std::sync::Arc<Dashboard>>, name: &str) -> Option<Asset> {
    if !dashboard.is_active() {
        return None;
    }
    assets::find(name).map(Asset::new)
}
