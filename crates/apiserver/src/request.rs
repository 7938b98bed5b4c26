//! Parsing of request paths and query strings into what a request is about, as kube-apiserver's
//! RequestInfoFactory does: `/api/v1/namespaces/default/services/web/status` is the `status`
//! subresource of service `web` in namespace `default`.

use std::collections::HashMap;

use switchyard_api::resources::{self, ResourceInfo};

/// What a resource request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequest {
    pub resource: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` path prefix was used.
    pub watch_path: bool,
}

/// The kinds of path the server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/api`
    LegacyRoot,
    /// `/apis`
    GroupsRoot,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    GroupVersion(String, String),
    Resource(ResourceRequest),
    /// A path under `/api` or `/apis` that names nothing served.
    Unknown,
}

/// Route an API path (already known to start with `/api` or `/apis`).
pub fn route(path: &str) -> Route {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Route::LegacyRoot,
        ["apis"] => return Route::GroupsRoot,
        ["api", v] => return Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g] => return Route::Group(g.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let mut rest: &[&str] = rest;
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    // `/namespaces/<ns>/<resource>...`, except `/namespaces/<name>[/status|/finalize]`, which
    // address the namespace object itself.
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !matches!(rest[2], "status" | "finalize")
    {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let Some(plural) = rest.first() else {
        return Route::Unknown;
    };
    let Some(resource) = resources::find(group, version, plural) else {
        return Route::Unknown;
    };
    if rest.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(ResourceRequest {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
        watch_path,
    })
}

/// Decode `%XX` escapes and `+` (as space) in a query component.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a query string into a map (the last value of a repeated key wins).
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k), percent_decode(v));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourceRequest {
        match route(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_paths_name_namespace_resource_name_and_subresource() {
        let r = res("/api/v1/namespaces/default/services/web/status");
        assert_eq!(r.resource.plural, "services");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = res("/apis/apps/v1/namespaces/x/deployments/d/scale");
        assert_eq!(
            (r.resource.plural, r.subresource.as_deref()),
            ("deployments", Some("scale"))
        );
    }

    #[test]
    fn namespace_objects_and_their_status_are_not_namespaced_requests() {
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.plural, r.namespace, r.name.as_deref()),
            ("namespaces", None, Some("kube-system"))
        );
        let r = res("/api/v1/namespaces/kube-system/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(res("/api/v1/namespaces").name, None);
    }

    #[test]
    fn cluster_wide_lists_and_legacy_watch_paths_route() {
        let r = res("/api/v1/pods");
        assert_eq!((r.resource.plural, r.namespace), ("pods", None));
        let r = res("/api/v1/watch/namespaces/default/pods");
        assert!(r.watch_path);
        assert_eq!(r.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn unknown_resources_and_roots_route_as_such() {
        assert_eq!(route("/api/v1/widgets"), Route::Unknown);
        assert_eq!(route("/apis/apps/v2/deployments"), Route::Unknown);
        assert_eq!(route("/api"), Route::LegacyRoot);
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            route("/apis/apps/v1"),
            Route::GroupVersion("apps".into(), "v1".into())
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier%20in%20(a)&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
