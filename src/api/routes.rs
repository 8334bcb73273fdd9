//! Method and path → the action asked for. Ids are checked here, so nothing behind the
//! router ever sees a string that could name a path outside `vms/`.

use uuid::Uuid;

use super::error::ApiError;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    ListVms,
    CreateVm,
    GetVm(Uuid),
    DeleteVm(Uuid),
}

pub fn route(method: &str, url: &str) -> Result<Route, ApiError> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    match path {
        "/vms" => match method {
            "GET" | "HEAD" => Ok(Route::ListVms),
            "POST" => Ok(Route::CreateVm),
            _ => Err(not_allowed(method, "GET or POST")),
        },
        _ => match path.strip_prefix("/vms/") {
            Some(id) if !id.contains('/') => {
                let route = match method {
                    "GET" | "HEAD" => Route::GetVm,
                    "DELETE" => Route::DeleteVm,
                    _ => return Err(not_allowed(method, "GET or DELETE")),
                };
                parse_id(id).map(route).ok_or(ApiError::VmNotFound)
            }
            _ => Err(ApiError::RouteNotFound(truncate(path))),
        },
    }
}

/// Only the canonical form (`8-4-4-4-12` hex) that this server hands out.
fn parse_id(text: &str) -> Option<Uuid> {
    if text.len() != 36 {
        return None;
    }
    Uuid::try_parse(text).ok()
}

fn not_allowed(method: &str, allowed: &'static str) -> ApiError {
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
        let id = Uuid::parse_str(ID).unwrap();
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
    fn bad_ids_are_unknown_vms() {
        for id in [
            "..",
            "%2E%2E",
            "..%2Fgold",
            "c8a934d72293a7d31baf",
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
        let long = "a".repeat(100_000);
        assert_eq!(
            route("DELETE", &format!("/vms/{long}")),
            Err(ApiError::VmNotFound)
        );
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
