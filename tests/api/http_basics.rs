//! `/api/config`, `/healthz`, `/readyz` and the static pages (contract section 6).

use serde_json::{Value, json};

use crate::support::{Settings, TestApp};

#[tokio::test]
async fn config_tells_frontends_the_mode_with_real_booleans() {
    let app = TestApp::spawn(Settings::local().var("POLL_INTERVAL_MS", "2500")).await;
    let body: Value = app.get("/api/config", None).await.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "ENABLE_RABBITMQ": false, "pollIntervalMs": 2500, "authRequired": true })
    );
    app.stop().await;

    let app = TestApp::spawn(Settings {
        auth: false,
        ..Settings::rabbit()
    })
    .await;
    let body: Value = app.get("/api/config", None).await.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "ENABLE_RABBITMQ": true, "pollIntervalMs": 10000, "authRequired": false })
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_200_when_serving() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_public_pages_are_served() {
    let app = TestApp::spawn(Settings::local()).await;
    let response = app.get("/", None).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("<html"));
    assert_eq!(app.get("/no-such-page.html", None).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn the_demo_feed_moves_the_pages_without_a_broker() {
    let app = TestApp::spawn(Settings::local().var("DEMO", "true")).await;
    let mut dashboard = app.socket(&app.cms_token()).await;
    // The feed may have started before we joined: replaying the room's history (an unknown
    // cursor) makes the first event ours either way.
    let (ack, _) = dashboard.join_after("cms:dashboard", "none-0").await;
    assert_eq!(ack["ok"], true);
    let first = dashboard.next().await;
    assert_eq!(
        (first["type"].as_str(), first["category"].as_str()),
        (Some("charging.started"), Some("session"))
    );
    let customer = first["data"]["customerId"].to_string();
    let page: Value = app
        .get(
            &format!("/api/notifications?room=customer:{customer}"),
            Some(&app.customer_token(&customer)),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["notifications"][0]["type"], "charging.started",
        "the customer sees it too"
    );
    app.stop().await;
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins_on_the_api_and_socket_io() {
    let app =
        TestApp::spawn(Settings::local().var("CORS_ORIGINS", "https://app.example.com")).await;
    let client = reqwest::Client::new();
    for path in ["/api/notifications", "/socket.io/?EIO=4&transport=polling"] {
        for (origin, allowed) in [
            ("https://app.example.com", true),
            ("https://evil.example.net", false),
        ] {
            let response = client
                .request(reqwest::Method::OPTIONS, format!("{}{path}", app.base))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .header("Access-Control-Request-Headers", "authorization")
                .send()
                .await
                .unwrap();
            let header = response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(
                header.as_deref() == Some(origin),
                allowed,
                "{path} from {origin}: {header:?}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_api_routes_and_methods_answer_json_errors() {
    let app = TestApp::spawn(Settings::local()).await;
    let response = app.get("/api/nope", None).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "not_found"
    );
    let response = reqwest::Client::new()
        .delete(format!("{}/api/notifications", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    app.stop().await;
}
