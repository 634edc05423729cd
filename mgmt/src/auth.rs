//! HTTP Basic auth against the admin users: a request guard, and the 401 that goes with it.

use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use rocket::http::{Header, Status};
use rocket::outcome::Outcome;
use rocket::request::{self, FromRequest, Request};
use rocket::State;

use crate::passwords::Login;
use crate::App;

/// An authenticated admin user. Routes that take this need Basic auth.
pub struct Admin {
    #[allow(dead_code)]
    pub username: String,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Admin {
    type Error = ();

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, ()> {
        let Some((username, password)) = request.headers().get_one("Authorization").and_then(basic_credentials) else {
            return Outcome::Error((Status::Unauthorized, ()));
        };
        let app = match request.guard::<&State<App>>().await {
            Outcome::Success(app) => app,
            _ => return Outcome::Error((Status::InternalServerError, ())),
        };
        match app.passwords.login(&app.db, source(request), &username, &password).await {
            Ok(Login::Accepted) => Outcome::Success(Admin { username }),
            Ok(Login::Refused | Login::Throttled) => Outcome::Error((Status::Unauthorized, ())),
            Ok(Login::Busy) => Outcome::Error((Status::ServiceUnavailable, ())),
            Err(_) => Outcome::Error((Status::InternalServerError, ())),
        }
    }
}

/// Where a request came from, for throttling and logs.
pub fn source(request: &Request<'_>) -> IpAddr {
    request.client_ip().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[derive(rocket::Responder)]
#[response(status = 401, content_type = "json")]
pub struct Unauthorized {
    body: &'static str,
    challenge: Header<'static>,
}

#[rocket::catch(401)]
pub fn unauthorized() -> Unauthorized {
    Unauthorized {
        body: r#"{"code":401,"message":"unauthorized"}"#,
        challenge: Header::new("WWW-Authenticate", "Basic realm=\"emqx control center\""),
    }
}
