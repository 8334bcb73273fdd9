//! The HTTP front: a tiny_http listener and a fixed pool of threads that answer requests.
//! Nothing here waits on a download or a provisioning step; DELETE is the one call that
//! waits on vmrun, by contract (204 means the files are gone).

use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use super::answer::Answer;
use super::error::ApiError;
use super::routes::{route, Route};
use super::{create_body, images, ops, vms};
use crate::service::{Created, Service};

/// A create request is a few hundred bytes; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct HttpServer {
    server: Arc<Server>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn bind(addr: SocketAddr) -> Result<Server, String> {
        Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
    }

    pub fn start(server: Server, threads: usize, service: Arc<Service>) -> Self {
        let server = Arc::new(server);
        let workers = (0..threads)
            .map(|n| {
                let server = server.clone();
                let service = service.clone();
                thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || serve(&server, &service))
                    .unwrap_or_else(|e| panic!("cannot start HTTP thread: {e}"))
            })
            .collect();
        Self { server, workers }
    }

    /// Stops taking requests and waits for those in flight.
    pub fn shutdown(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn serve(server: &Server, service: &Service) {
    // recv() fails only when the listener is gone or unblocked for shutdown.
    while let Ok(request) = server.recv() {
        handle(request, service);
    }
}

fn handle(mut request: Request, service: &Service) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let result = authorize(&request, &url, service)
        .and_then(|()| answer(&mut request, &method, &url, service));
    let response = match result {
        Ok(Reply::Json(status, body)) => json(status, body),
        Ok(Reply::Empty(status)) => Response::new(
            StatusCode(status),
            vec![],
            Cursor::new(Arc::from(&[][..])),
            Some(0),
            None,
        ),
        Ok(Reply::Answer(answer)) => answer.into_response(),
        Err(err) => {
            // Refusals that are expected in normal operation (503 capacity-exhausted and
            // draining tell a coordinator to go elsewhere) are not server errors.
            if err.status() >= 500 && err.status() != 503 {
                crate::error!("{method} {url}: {err}");
            }
            let mut response = json(err.status(), Arc::from(err.body()));
            for (name, value) in err.headers() {
                if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                    response.add_header(header);
                }
            }
            response
        }
    };
    service
        .fleet()
        .metrics
        .record_http_request(method.as_str(), response.status_code().0);
    let response = if method == Method::Head {
        let length = response.data_length();
        response.with_data(Cursor::new(Arc::from(&[][..])), length)
    } else {
        response
    };
    // The client may have gone; nothing to do about it.
    let _ = request.respond(response);
}

enum Reply {
    Json(u16, Arc<[u8]>),
    Empty(u16),
    Answer(Answer),
}

/// With a token configured, every endpoint but `/healthz` wants it.
fn authorize(request: &Request, url: &str, service: &Service) -> Result<(), ApiError> {
    if super::routes::path(url) == super::routes::HEALTH_PATH {
        return Ok(());
    }
    service
        .fleet()
        .auth
        .check(header(request, "Authorization"))
        .map_err(|e| ApiError::Unauthorized(e.to_string()))
}

fn answer(
    request: &mut Request,
    method: &Method,
    url: &str,
    service: &Service,
) -> Result<Reply, ApiError> {
    match route(method.as_str(), url)? {
        Route::ListVms => Ok(Reply::Json(200, join_array(&service.list()))),
        Route::GetVm(id) => {
            vms::get(service, id, url, header(request, "If-None-Match")).map(Reply::Answer)
        }
        Route::RenewVm(id) => {
            check_content_type(request)?;
            let body = read_body(request)?;
            vms::renew(service, id, &body).map(Reply::Answer)
        }
        Route::ListImages => Ok(Reply::Answer(images::list(&service.fleet().gold))),
        Route::GetImage(checksum) => {
            images::get(&service.fleet().gold, &checksum).map(Reply::Answer)
        }
        Route::PrewarmImage => {
            check_content_type(request)?;
            let body = read_body(request)?;
            images::prewarm(&service.fleet().gold, &body).map(Reply::Answer)
        }
        Route::DeleteImage(checksum) => {
            images::delete(&service.fleet().gold, &checksum).map(Reply::Answer)
        }
        Route::Health => Ok(Reply::Answer(ops::health(service))),
        Route::Metrics => Ok(Reply::Answer(ops::metrics(service))),
        Route::DrainState => Ok(Reply::Answer(ops::drain_state(service))),
        Route::Drain => ops::drain(service).map(Reply::Answer),
        Route::Undrain => ops::undrain(service).map(Reply::Answer),
        Route::DeleteVm(id) => {
            service.delete(id)?;
            Ok(Reply::Empty(204))
        }
        Route::CreateVm => {
            check_content_type(request)?;
            let body = read_body(request)?;
            let mut create = create_body::parse(&body)?;
            if let Some(key) = header(request, "Idempotency-Key") {
                create.name = Some(create_body::check_name(key.trim())?);
            }
            // A replay answers as the first create did, so a retrying client needs no
            // special case; the VM object shows the state it has reached since.
            match service.create(create)? {
                Created::New(json) | Created::Existing(json) => Ok(Reply::Json(202, json)),
            }
        }
    }
}

fn header<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn check_content_type(request: &Request) -> Result<(), ApiError> {
    let Some(value) = header(request, "Content-Type") else {
        return Ok(());
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // `curl -d@create.json` sends the form type: the seed's own example must work.
    match essence.as_str() {
        "application/json"
        | "application/x-www-form-urlencoded"
        | "text/json"
        | "text/plain"
        | "" => Ok(()),
        _ if essence.ends_with("+json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            value.chars().take(100).collect(),
        )),
    }
}

fn read_body(request: &mut Request) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::InvalidJson(format!("cannot read the request body: {e}")))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(body)
}

fn join_array(items: &[Arc<[u8]>]) -> Arc<[u8]> {
    let len = items.iter().map(|i| i.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Arc::from(out)
}

fn json(status: u16, body: Arc<[u8]>) -> Response<Cursor<Arc<[u8]>>> {
    let length = body.len();
    let content_type = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .map(|h| vec![h])
        .unwrap_or_default();
    Response::new(
        StatusCode(status),
        content_type,
        Cursor::new(body),
        Some(length),
        None,
    )
}
