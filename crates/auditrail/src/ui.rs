//! The search page at `/ui` on the admin listener (docs/ui.md): one static
//! page, its script and its style sheet, compiled into the binary. No build
//! step, no CDN, no font or script from anywhere else.
//!
//! The files hold no event and no secret: everything the page shows it
//! fetches from the admin API (`/v1/events`, `/readyz`, ...) with the
//! reader's bearer token, which the admin API checks as for any other
//! client. A browser that opens a URL cannot send a bearer token (and the
//! admin API takes no cookie or Basic credentials, by design), so these
//! files are served to whoever reaches the listener
//! ([`crate::admin_auth`] lets them through; the loopback `Host` check
//! still holds when the admin API takes no credentials).
//!
//! Events carry text that whoever emitted them chose: the script only ever
//! puts it into the page as text (`textContent`), and the Content Security
//! Policy below allows no script but this one, so text that looks like
//! HTML or script stays text.

use axum::extract::RawQuery;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the page lives; `/ui?actor=…` and the other filters open a search.
pub const PATH: &str = "/ui";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
const FAVICON_SVG: &str = include_str!("ui/favicon.svg");

/// Only this origin's script, style, images and API; no inline script or
/// style (so injected markup could run nothing even if some slipped
/// through), no framing, no `<base>` or form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The page's routes (no state: the files are constants).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/ui/", get(to_page))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/ui/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
}

/// Whether `path` is one of the page's static files, which need no
/// credentials (see the module's comment).
pub fn is_static_file(path: &str) -> bool {
    matches!(
        path,
        PATH | "/ui/" | "/ui/app.js" | "/ui/style.css" | "/ui/favicon.svg"
    )
}

/// `/ui/` is `/ui`, with its search: the page's relative links assume
/// `/ui`.
async fn to_page(RawQuery(query): RawQuery) -> Redirect {
    match query {
        Some(query) => Redirect::permanent(&format!("{PATH}?{query}")),
        None => Redirect::permanent(PATH),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Deep links hold search terms (actors, targets): a click on a
        // trace link must not hand them to the tracing UI's server.
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        // Revalidated on each load, so an upgrade's page is the one shown.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is one the router serves and the auth lets
    /// through, and nothing else is.
    #[test]
    fn the_page_loads_only_its_own_files() {
        for file in ["ui/app.js", "ui/style.css", "ui/favicon.svg"] {
            assert!(INDEX_HTML.contains(&format!("\"{file}\"")), "{file}");
            assert!(is_static_file(&format!("/{file}")), "{file}");
        }
        assert!(is_static_file("/ui"));
        assert!(!is_static_file("/ui/other.js"));
        assert!(!is_static_file("/v1/events"));
        // No remote script, style or font, and no inline script, style or
        // event handler (the Content Security Policy would refuse them).
        for forbidden in [
            "http://", "https://", "//", "<script>", "style=\"", "<style",
        ] {
            assert!(
                !INDEX_HTML.contains(forbidden),
                "index.html holds {forbidden:?}"
            );
        }
        assert!(
            !has_inline_handler(INDEX_HTML),
            "index.html has an on...= attribute"
        );
    }

    /// ` onclick=`, ` onload=` and the like.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn inline_handlers_are_recognised() {
        assert!(has_inline_handler("<img src=x onerror=alert(1)>"));
        assert!(!has_inline_handler("<p>click on the row</p>"));
    }

    /// The script never turns event text into markup.
    #[test]
    fn the_script_writes_text_not_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
