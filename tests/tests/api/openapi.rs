//! The OpenAPI document against the live sidecar: served without auth beside its Swagger UI, every GET
//! answers in the documented shape, and every example body is one the API accepts.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// A documented path with its parameters filled in for this stack.
fn concrete(path: &str) -> String {
    path.replace("{node}", NODE)
        .replace("{clientid}", "oa-client")
        .replace("{topic}", "oa/topic")
        .replace("{username}", "operator")
        .replace("{plugin}", "emq_modules")
        .replace("{name}", "emq_retainer")
        .replace("{app_name}", "emqttd")
        .trim_start_matches('/')
        .to_string()
}

/// The schema at `pointer` in `operation`, with the document's components beside it to resolve `$ref`s.
fn schema(doc: &Value, operation: &Value, pointer: &str) -> Value {
    let schema = operation.pointer(pointer).unwrap_or_else(|| panic!("no {pointer} in {operation}"));
    json!({ "$ref": schema["$ref"], "components": doc["components"] })
}

#[tokio::test]
async fn the_document_matches_the_live_api() {
    let stack = Stack::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.mgmt.addr);

    let served = http.get(format!("{base}/api-docs/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK, "the document needs no credentials");
    let doc: Value = served.json().await.expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["servers"][0]["url"], "/api/v2");
    assert_eq!(doc["components"]["securitySchemes"]["basic"]["scheme"], "basic");

    let ui = http.get(format!("{base}/api-docs")).send().await.unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    let page = ui.text().await.unwrap();
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-initializer.js"] {
        assert!(page.contains(asset), "{asset} not in the page");
        let served = http.get(format!("{base}/api-docs/{asset}")).send().await.unwrap();
        assert_eq!(served.status(), StatusCode::OK, "{asset}");
    }

    // What the paths below need: a connected client with a subscription, and the user `operator`.
    let client = Client::connect(stack.mqtt_port(), "oa-client").await;
    client.client.subscribe("oa/topic", rumqttc::QoS::AtLeastOnce).await.unwrap();
    stack
        .api
        .ok(Method::POST, "users", Some(json!({"username": "operator", "password": "op-pass-1", "tags": "x"})))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.api.get("subscriptions/oa-client").await["objects"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the subscription never showed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut gets = 0;
    let mut bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let url = concrete(path);
            let method: Method = method.to_uppercase().parse().unwrap();
            if method == Method::GET {
                // Every GET answers code 0 here, in the documented shape.
                let reply = stack.api.call(Method::GET, &url, None).await;
                assert_eq!(reply["code"], 0, "GET {url}: {reply}");
                let schema = schema(&doc, operation, "/responses/200/content/application~1json/schema");
                if let Err(e) = jsonschema::validate(&schema, &reply) {
                    panic!("GET {url} answers outside its documented schema: {e}\n{reply}");
                }
                gets += 1;
            } else if operation.get("requestBody").is_some() {
                // Every example body is well-formed for the API: whatever the business answer, not 107,
                // 108 or 109.
                let body_schema = schema(&doc, operation, "/requestBody/content/application~1json/schema");
                let name = body_schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
                let example = doc["components"]["schemas"][name]["example"].clone();
                let (status, text) = stack.api.send(method.clone(), &url, Some(&example.to_string()), true).await;
                assert_eq!(status, StatusCode::OK, "{method} {url}: {text}");
                let reply: Value = serde_json::from_str(&text).unwrap();
                let code = reply["code"].as_u64().unwrap();
                assert!(![107, 108, 109].contains(&code), "{method} {url} refused its own example {example}: {reply}");
                bodies += 1;
            }
        }
    }
    assert!(gets >= 25 && bodies >= 12, "{gets} GETs and {bodies} bodies checked");
}
