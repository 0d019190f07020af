//! The binary carries its pages: copied alone into an empty directory (no `public/`, no
//! `.env`), it serves `/dashboard.html` and every module that page imports, the client bundle
//! included, as JavaScript; the versioned client bundle is cached as immutable, the rest is
//! revalidated.

use crate::support::daemon::Daemon;
use crate::support::unique;

/// The relative module imports (`src="…"`, `from './…'`, `import './…'`) of a page or module.
fn relative_imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["src=\"", "from '", "import '", "from \"", "import \""] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            let end = rest.find(['"', '\'']).unwrap_or(0);
            let target = &rest[..end];
            if target.ends_with(".js") && !target.contains("://") {
                found.push(target.trim_start_matches("./").to_owned());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_copied_binary_alone_serves_the_dashboard_and_the_bundle_it_imports() {
    let dir = std::env::temp_dir().join(unique("nb-bare"));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("notify-bridge");
    std::fs::copy(env!("CARGO_BIN_EXE_notify-bridge"), &binary).expect("copy the binary");
    let mut daemon = Daemon::builder()
        .binary(&binary)
        .dir(&dir)
        .var("HOST", "127.0.0.1")
        .var("RUST_LOG", "warn")
        .start();
    daemon.wait_listening().await;
    let base = daemon.base.clone();
    let client = reqwest::Client::new();

    let page = client
        .get(format!("{base}/dashboard.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("CMS dashboard"));

    // Follow the page's module graph: every module it needs is there, as JavaScript.
    let mut pending = relative_imports(&html);
    let mut fetched = Vec::new();
    while let Some(path) = pending.pop() {
        if fetched.contains(&path) {
            continue;
        }
        let response = client.get(format!("{base}/{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.contains("javascript"),
            "{path}: {content_type}"
        );
        let text = response.text().await.unwrap();
        // Imports are relative to the importing module's directory.
        let dir_of = path.rsplit_once('/').map_or("", |(d, _)| d);
        for import in relative_imports(&text) {
            pending.push(if dir_of.is_empty() {
                import
            } else {
                format!("{dir_of}/{import}")
            });
        }
        fetched.push(path);
    }
    assert!(
        fetched.iter().any(|p| p == "vendor/notify-client.js"),
        "the page imports the client bundle: {fetched:?}"
    );

    // `vendor/notify-client-<version>.js` never changes under its name; everything else may.
    let version =
        serde_json::from_str::<serde_json::Value>(include_str!("../../client/package.json"))
            .expect("client/package.json is JSON")["version"]
            .as_str()
            .expect("a version")
            .to_owned();
    for (path, cache) in [
        (
            format!("vendor/notify-client-{version}.js"),
            "public, max-age=31536000, immutable",
        ),
        ("vendor/notify-client.js".to_owned(), "no-cache"),
        ("dashboard.html".to_owned(), "no-cache"),
    ] {
        let response = client.get(format!("{base}/{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["cache-control"], cache, "{path}");
    }

    let missing = client
        .get(format!("{base}/nope.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
