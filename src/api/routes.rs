//! Method and path → the action asked for. Ids are checked here, so nothing behind the
//! router ever sees a string that could name a path outside `vms/`.

use crate::vm::VmId;

use super::error::ApiError;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    ListVms,
    CreateVm,
    GetVm(VmId),
    DeleteVm(VmId),
    RenewVm(VmId),
    /// The VM's `vmware.log`, as text.
    VmLog(VmId),
    ListImages,
    PrewarmImage,
    /// A lowercase hex digest: safe as a path component.
    GetImage(String),
    DeleteImage(String),
    Health,
    Metrics,
    DrainState,
    Drain,
    Undrain,
    OpenApi,
    ListPools,
    /// A checked pool name (safe as a file name).
    GetPool(String),
    PutPool(String),
    DeletePool(String),
    /// The fleet's hosts.
    ListHosts,
}

/// The one path that answers without a token: load balancers and watchdogs probe it.
pub const HEALTH_PATH: &str = "/healthz";

/// The path without query, fragment or trailing slash.
pub fn path(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or("");
    path.strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path)
}

pub fn route(method: &str, url: &str) -> Result<Route, ApiError> {
    let path = path(url);
    let get = matches!(method, "GET" | "HEAD");
    match path {
        "/vms" => match method {
            _ if get => Ok(Route::ListVms),
            "POST" => Ok(Route::CreateVm),
            _ => Err(not_allowed(method, &["GET", "POST"])),
        },
        "/images" => match method {
            _ if get => Ok(Route::ListImages),
            "POST" => Ok(Route::PrewarmImage),
            _ => Err(not_allowed(method, &["GET", "POST"])),
        },
        HEALTH_PATH if get => Ok(Route::Health),
        "/metrics" if get => Ok(Route::Metrics),
        HEALTH_PATH | "/metrics" => Err(not_allowed(method, &["GET"])),
        "/drain" => match method {
            _ if get => Ok(Route::DrainState),
            "POST" => Ok(Route::Drain),
            "DELETE" => Ok(Route::Undrain),
            _ => Err(not_allowed(method, &["GET", "POST", "DELETE"])),
        },
        "/hosts" if get => Ok(Route::ListHosts),
        "/hosts" => Err(not_allowed(method, &["GET"])),
        "/pools" if get => Ok(Route::ListPools),
        "/pools" => Err(not_allowed(method, &["GET"])),
        "/undrain" if method == "POST" => Ok(Route::Undrain),
        super::openapi::PATH if get => Ok(Route::OpenApi),
        super::openapi::PATH => Err(not_allowed(method, &["GET"])),
        "/undrain" => Err(not_allowed(method, &["POST"])),
        _ => {
            if let Some(rest) = path.strip_prefix("/vms/") {
                return vm_route(method, rest);
            }
            if let Some(checksum) = path.strip_prefix("/images/") {
                return image_route(method, checksum);
            }
            if let Some(name) = path.strip_prefix("/pools/") {
                return pool_route(method, name);
            }
            Err(ApiError::RouteNotFound(truncate(path)))
        }
    }
}

/// `/vms/:id`, `/vms/:id/renew` and `/vms/:id/log`.
fn vm_route(method: &str, rest: &str) -> Result<Route, ApiError> {
    let (id, action) = match rest.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (rest, None),
    };
    let route = match (action, method) {
        (None, "GET" | "HEAD") => Route::GetVm,
        (None, "DELETE") => Route::DeleteVm,
        (None, _) => return Err(not_allowed(method, &["GET", "DELETE"])),
        (Some("renew"), "POST") => Route::RenewVm,
        (Some("renew"), _) => return Err(not_allowed(method, &["POST"])),
        (Some("log"), "GET" | "HEAD") => Route::VmLog,
        (Some("log"), _) => return Err(not_allowed(method, &["GET"])),
        (Some(_), _) => return Err(ApiError::RouteNotFound(truncate(rest))),
    };
    parse_id(id).map(route).ok_or(ApiError::VmNotFound)
}

/// `/images/:checksum`: any case on the wire, lowercase (as folders are named) inside.
fn image_route(method: &str, checksum: &str) -> Result<Route, ApiError> {
    let route = match method {
        "GET" | "HEAD" => Route::GetImage,
        "DELETE" => Route::DeleteImage,
        _ => return Err(not_allowed(method, &["GET", "DELETE"])),
    };
    let checksum = checksum.to_ascii_lowercase();
    if !crate::image::is_any_digest(&checksum) {
        return Err(ApiError::ImageNotFound);
    }
    Ok(route(checksum))
}

/// `/pools/:name`.
fn pool_route(method: &str, name: &str) -> Result<Route, ApiError> {
    let route = match method {
        "GET" | "HEAD" => Route::GetPool,
        "PUT" => Route::PutPool,
        "DELETE" => Route::DeletePool,
        _ => return Err(not_allowed(method, &["GET", "PUT", "DELETE"])),
    };
    super::pool_body::name(name).map(route)
}

/// The canonical UUID form this server hands out, or the original's 20 hex digits.
fn parse_id(text: &str) -> Option<VmId> {
    VmId::parse(text)
}

fn not_allowed(method: &str, allowed: &'static [&'static str]) -> ApiError {
    ApiError::MethodNotAllowed {
        method: truncate(method),
        allowed,
    }
}

/// Echoing a hostile 1 MB path back into an error or a log line helps nobody.
fn truncate(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";

    #[test]
    fn routes_the_api() {
        let id = VmId::parse(ID).unwrap();
        assert_eq!(route("GET", "/vms"), Ok(Route::ListVms));
        assert_eq!(route("GET", "/vms/"), Ok(Route::ListVms));
        assert_eq!(route("POST", "/vms"), Ok(Route::CreateVm));
        assert_eq!(route("GET", &format!("/vms/{ID}")), Ok(Route::GetVm(id)));
        assert_eq!(
            route("GET", &format!("/vms/{ID}?wait=5")),
            Ok(Route::GetVm(id))
        );
        assert_eq!(
            route("DELETE", &format!("/vms/{ID}/")),
            Ok(Route::DeleteVm(id))
        );
    }

    #[test]
    fn routes_the_fleet_endpoints() {
        let id = VmId::parse(ID).unwrap();
        let sum = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";
        assert_eq!(
            route("POST", &format!("/vms/{ID}/renew")),
            Ok(Route::RenewVm(id))
        );
        assert_eq!(
            route("GET", &format!("/vms/{ID}/renew"))
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route("POST", &format!("/vms/{ID}/reboot"))
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(route("POST", "/vms/nope/renew"), Err(ApiError::VmNotFound));
        assert_eq!(
            route("GET", &format!("/vms/{ID}/log")),
            Ok(Route::VmLog(id))
        );
        assert_eq!(
            route("DELETE", &format!("/vms/{ID}/log"))
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(route("GET", "/vms/../log"), Err(ApiError::VmNotFound));
        assert_eq!(
            route("GET", &format!("/vms/{ID}/log/x"))
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(route("GET", "/images"), Ok(Route::ListImages));
        assert_eq!(route("POST", "/images/"), Ok(Route::PrewarmImage));
        assert_eq!(
            route("DELETE", &format!("/images/{}", sum.to_uppercase())),
            Ok(Route::DeleteImage(sum.into()))
        );
        assert_eq!(
            route("GET", &format!("/images/{sum}")),
            Ok(Route::GetImage(sum.into()))
        );
        for bad in [
            "..",
            "%2e%2e",
            "abc",
            "5cf00d380e28d02f30efaceafef7c7c8bdedae3z",
        ] {
            assert_eq!(
                route("DELETE", &format!("/images/{bad}")),
                Err(ApiError::ImageNotFound),
                "{bad}"
            );
        }
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(route("HEAD", "/metrics?x=1"), Ok(Route::Metrics));
        assert_eq!(route("POST", "/metrics").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/drain"), Ok(Route::DrainState));
        assert_eq!(route("POST", "/drain"), Ok(Route::Drain));
        assert_eq!(route("DELETE", "/drain"), Ok(Route::Undrain));
        assert_eq!(route("POST", "/undrain"), Ok(Route::Undrain));
        assert_eq!(route("GET", "/undrain").unwrap_err().status(), 405);
        assert_eq!(path("/healthz/?probe=1"), "/healthz");
        assert_eq!(route("GET", "/openapi.json"), Ok(Route::OpenApi));
        assert_eq!(route("POST", "/openapi.json").unwrap_err().status(), 405);
        assert_eq!(route("GET", "/pools/"), Ok(Route::ListPools));
        assert_eq!(
            route("PUT", "/pools/macos-13"),
            Ok(Route::PutPool("macos-13".into()))
        );
        assert_eq!(route("HEAD", "/pools/a"), Ok(Route::GetPool("a".into())));
        assert_eq!(
            route("DELETE", "/pools/a"),
            Ok(Route::DeletePool("a".into()))
        );
        assert_eq!(route("POST", "/pools/a").unwrap_err().status(), 405);
        assert_eq!(route("POST", "/pools").unwrap_err().status(), 405);
        for bad in ["..", ".x", "a%2Fb", "a/b", "é"] {
            let err = route("GET", &format!("/pools/{bad}")).unwrap_err();
            assert_eq!(err.code(), "invalid-pool-name", "{bad}");
        }
    }

    #[test]
    fn bad_ids_are_unknown_vms() {
        for id in [
            "..",
            "%2E%2E",
            "..%2Fgold",
            // The original's ids are 20 lowercase hex digits, exactly.
            "C8A934D72293A7D31BAF",
            "c8a934d72293a7d31ba",
            "c8a934d72293a7d31bafa",
            "282ee68a2e4d4bd79c0e7f37e12fc489",
            "{282ee68a-2e4d-4bd7-9c0e-7f37e12fc489}",
            "282ee68a-2e4d-4bd7-9c0e-7f37e12fc48\0",
        ] {
            assert_eq!(
                route("GET", &format!("/vms/{id}")),
                Err(ApiError::VmNotFound),
                "{id}"
            );
        }
        let legacy = VmId::parse("c8a934d72293a7d31baf").unwrap();
        assert_eq!(
            route("GET", "/vms/c8a934d72293a7d31baf"),
            Ok(Route::GetVm(legacy))
        );
        let long = "a".repeat(100_000);
        assert_eq!(
            route("DELETE", &format!("/vms/{long}")),
            Err(ApiError::VmNotFound)
        );
    }

    #[test]
    fn a_405_names_the_methods_of_its_path() {
        let allow = |method: &str, url: &str| {
            let err = route(method, url).unwrap_err();
            assert_eq!(err.status(), 405, "{method} {url}");
            let headers = err.headers();
            assert_eq!(headers.len(), 1, "{headers:?}");
            assert_eq!(headers[0].0, "Allow");
            (headers[0].1.clone(), err.message())
        };
        let (header, message) = allow("TRACE", "/vms");
        assert_eq!(header, "GET, HEAD, POST");
        assert!(message.ends_with("use GET or POST"), "{message}");
        let (header, message) = allow("PATCH", "/drain");
        assert_eq!(header, "GET, HEAD, POST, DELETE");
        assert!(message.ends_with("use GET, POST or DELETE"), "{message}");
        assert_eq!(allow("GET", "/undrain").0, "POST");
        assert_eq!(allow("PUT", &format!("/vms/{ID}/renew")).0, "POST");
        assert_eq!(allow("POST", "/pools/a").0, "GET, HEAD, PUT, DELETE");
        assert_eq!(allow("OPTIONS", "/openapi.json").0, "GET, HEAD");
        assert!(route("GET", "/nope").unwrap_err().headers().is_empty());
    }

    #[test]
    fn other_paths_and_methods_are_json_errors() {
        assert_eq!(route("GET", "/").unwrap_err().status(), 404);
        assert_eq!(route("GET", "/vms/a/b").unwrap_err().status(), 404);
        assert_eq!(route("PUT", "/vms").unwrap_err().status(), 405);
        assert_eq!(
            route("POST", &format!("/vms/{ID}")).unwrap_err().status(),
            405
        );
        let err = route("GET", &format!("/{}", "x".repeat(5000))).unwrap_err();
        assert!(err.message().len() < 400);
    }
}
