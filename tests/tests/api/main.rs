//! End-to-end tests: the real `midge-broker` and `midge-mgmt` binaries, driven over HTTP and MQTT. One
//! test binary, a module per concern; `helpers` starts the processes, each test on its own ports and
//! database.

mod browser;
mod cluster;
mod ctl;
mod dashboard;
mod desired;
mod helpers;
mod http;
mod link;
mod logins;
mod logs;
mod mqtt5;
mod openapi;
mod prometheus;
mod routes;
