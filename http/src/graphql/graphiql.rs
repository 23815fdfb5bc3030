//! GraphiQL on `GET /graphql`, served from assets bundled at build time (`http/graphiql/`,
//! see `http/build.rs`): no CDN, so it works in a closed network, under a CSP that allows
//! exactly this page's own script and stylesheet, its data-URL fonts and images, and
//! connections back to this origin (`POST /graphql`, the `/graphql/ws` WebSocket).

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/graphiql/graphiql.js"));
const STYLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/graphiql/graphiql.css"));
const LICENSES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/graphiql/graphiql.js.LEGAL.txt"));

/// The page: the bundle reads the endpoints from the root element's data attributes.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medflow · GraphiQL</title>
<link rel="stylesheet" href="/graphql/assets/graphiql.css">
</head>
<body>
<div id="graphiql" data-endpoint="/graphql" data-subscriptions="/graphql/ws" data-schema="/graphql/schema.graphql">Loading GraphiQL…</div>
<script type="module" src="/graphql/assets/graphiql.js"></script>
</body>
</html>
"#;

/// What the page may load and connect to. `'self'` in `connect-src` covers the same-origin
/// WebSocket (CSP Level 3). Fonts and icons come inlined in the stylesheet as data URLs.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /graphql` (the page) and `GET /graphql/assets/{graphiql.js,graphiql.css,licenses.txt}`,
/// or 404 for both when GraphiQL is switched off.
pub fn routes(enabled: bool) -> BoxedFilter<(Response,)> {
    let page = warp::path!("graphql")
        .and(warp::get())
        .map(|| asset(PAGE.as_bytes(), "text/html; charset=utf-8", "no-cache"));
    let assets = warp::path!("graphql" / "assets" / String)
        .and(warp::get())
        .and_then(|name: String| async move {
            match name.as_str() {
                "graphiql.js" => Ok(asset(SCRIPT, "text/javascript; charset=utf-8", CACHED)),
                "graphiql.css" => Ok(asset(STYLE, "text/css; charset=utf-8", CACHED)),
                "licenses.txt" => Ok(asset(LICENSES, "text/plain; charset=utf-8", CACHED)),
                _ => Err(warp::reject::not_found()),
            }
        });
    warp::any()
        .and_then(move || async move {
            if enabled {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(page.or(assets).unify())
        .boxed()
}

/// The assets change only with a new build (a new pod), whose page revalidates.
const CACHED: &str = "public, max-age=3600";

fn asset(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_embedded_and_the_page_loads_only_its_own_assets() {
        assert!(SCRIPT.len() > 100_000, "the GraphiQL bundle is embedded");
        assert!(STYLE.len() > 10_000, "its stylesheet is embedded");
        assert!(
            !PAGE.contains("http"),
            "no asset from another origin: {PAGE}"
        );
        assert!(
            !PAGE.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
    }
}
