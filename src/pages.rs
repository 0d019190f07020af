//! The pages at `/`: `public/` as it was at build time, built into the binary (the browser
//! bundles in `public/vendor/` included), so a copied binary or a `cargo install` serves working
//! pages. `PUBLIC_DIR` serves a directory instead (see `http::router`).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "public/"]
struct Public;

/// Answers a GET or HEAD for an embedded page, with a strong ETag of its content: browsers
/// revalidate (`no-cache`) and get a 304 while the binary is the same. A versioned client
/// bundle (`vendor/notify-client-<version>.js`) never changes under its name, so it is cached
/// for a year without revalidation.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let Some(file) = Public::get(&path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // Built from hex digits and quotes: always a valid header value.
    let etag = HeaderValue::from_str(&etag).expect("hex ETag");
    let cache_control = if is_versioned_bundle(&path) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let cache = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        ),
    ];
    if headers.get(header::IF_NONE_MATCH) == Some(&etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let content_type = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let body = if method == Method::HEAD {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(file.data)
    };
    (cache, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `vendor/notify-client-1.2.3.js`: a bundle whose name carries its version.
fn is_versioned_bundle(path: &str) -> bool {
    path.strip_prefix("vendor/notify-client-")
        .and_then(|rest| rest.strip_suffix(".js"))
        .is_some_and(|version| {
            version.starts_with(|c: char| c.is_ascii_digit())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_and_their_bundles_are_built_in() {
        for path in [
            "index.html",
            "dashboard.html",
            "customer.html",
            "vendor/notify-client.js",
        ] {
            assert!(Public::get(path).is_some(), "{path} is embedded");
        }
        let bundle = Public::get("vendor/notify-client.js").unwrap();
        assert!(bundle.metadata.mimetype().contains("javascript"));
    }
}
