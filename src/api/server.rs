//! The HTTP front: a tiny_http listener and two pools of threads.
//!
//! tiny_http reads and parses each connection on a thread of its own and queues the
//! requests. A few threads take them from that queue and answer GETs from memory at once
//! (a GET handler must never wait on the disk, vmrun or the network: it would stall polls);
//! everything else (POST writes a record to disk, DELETE waits on vmrun, by contract: 204
//! means the files are gone) is handed to a second, larger pool. So no number of slow calls
//! can hold up a poll, and the threads on the hot path stay few: each request already costs
//! two thread wake-ups, and with many idle takers each one wakes a cold thread (the polling
//! bench answered 82k GETs/s with 16 takers, 106k with 2, on 2 cores).

use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tiny_http::{Header, Limits, Method, Request, Response, Server, StatusCode};

use super::action::{self, header, Action};
use super::answer::Answer;
use super::auth::Auth;
use super::error::ApiError;
use super::{images, ops, pools, vms};
use crate::service::{Created, Service};

use super::action::MAX_BODY_BYTES;

/// What one client may cost. tiny_http (vendored, see src/vendor/tiny_http/PATCHES.md) reads
/// each request's head and body in the connection's own thread under these limits, so
/// the threads below never wait on a slow client's socket.
pub fn limits() -> Limits {
    Limits {
        max_request_line: 8 * 1024,
        max_head_bytes: 32 * 1024,
        max_headers: 100,
        head_timeout: Duration::from_secs(20),
        // Longer than Go's http.Transport keeps an idle connection (90 s): a client never
        // sends a request on a connection the server is closing at that moment.
        idle_timeout: Duration::from_secs(120),
        // A new connection that sends no complete request head in this time is closed: a
        // thousand silent connections must not hold every place for two minutes.
        first_request_timeout: Duration::from_secs(5),
        max_connections_per_ip: 0,
        max_buffered_body: MAX_BODY_BYTES,
        body_timeout: Duration::from_secs(30),
        io_timeout: Duration::from_secs(30),
        max_drain: MAX_BODY_BYTES,
        max_connections: 1024,
    }
}

/// What the threads answering requests share: the service, and the API's own token check.
struct Front {
    service: Arc<Service>,
    auth: Auth,
}

pub struct HttpServer {
    server: Arc<Server>,
    takers: Vec<thread::JoinHandle<()>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Serves HTTPS only when `tls` is given (see `crate::tls::server`), with the same limits.
    pub fn bind(
        addr: SocketAddr,
        tls: Option<tiny_http::SslConfig>,
        max_connections_per_ip: usize,
    ) -> Result<Server, String> {
        let limits = Limits {
            max_connections_per_ip,
            ..limits()
        };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        Server::from_listener_with_limits(listener, tls, limits)
            .map_err(|e| format!("cannot serve on {addr}: {e}"))
    }

    /// `threads` answer the calls that wait on the disk or on vmrun; GETs are answered by
    /// one taker thread per core (at least 2).
    pub fn start(server: Server, threads: usize, service: Arc<Service>, auth: Auth) -> Self {
        let server = Arc::new(server);
        let front = Arc::new(Front { service, auth });
        let (slow, slow_queue) = crossbeam_channel::unbounded::<Request>();
        let workers = (0..threads)
            .map(|n| {
                let queue = slow_queue.clone();
                let front = front.clone();
                spawn(format!("http-{n}"), move || {
                    for request in queue {
                        handle(request, &front);
                    }
                })
            })
            .collect();
        let takers = (0..taker_count())
            .map(|n| {
                let (server, front, slow) = (server.clone(), front.clone(), slow.clone());
                spawn(format!("http-get-{n}"), move || {
                    take(&server, &front, &slow)
                })
            })
            .collect();
        Self {
            server,
            takers,
            workers,
        }
    }

    /// Stops taking requests and waits for those in flight.
    pub fn shutdown(self) {
        for _ in &self.takers {
            self.server.unblock();
        }
        for taker in self.takers {
            let _ = taker.join();
        }
        // The takers held the only senders: the workers finish the queue, then stop.
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name)
        .spawn(body)
        .unwrap_or_else(|e| panic!("cannot start HTTP thread: {e}"))
}

fn taker_count() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn take(server: &Server, front: &Front, slow: &crossbeam_channel::Sender<Request>) {
    // recv() fails only when the listener is gone or unblocked for shutdown.
    while let Ok(request) = server.recv() {
        if answers_from_memory(&request) {
            handle(request, front);
        } else if let Err(unsent) = slow.send(request) {
            // Only if every worker is gone; answer here rather than drop the client.
            handle(unsent.into_inner(), front);
        }
    }
}

/// The polls: `GET /vms` and `GET /vms/:id` without `wait`. Long polls wait by design, and
/// `/healthz`, `/metrics` and `/images` run vmrun or walk folders: those go to the pool.
fn answers_from_memory(request: &Request) -> bool {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return false;
    }
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    (path == "/vms" || path.starts_with("/vms/"))
        && !path.trim_end_matches('/').ends_with("/log")
        && !query.split('&').any(|p| p.starts_with("wait="))
}

/// Answers bigger than this are written by a thread of their own: a client that does
/// not read its answer (or reads a byte a second) then holds that thread, not a worker.
/// Smaller ones fit in the socket's send buffer and never wait on the client.
const INLINE_ANSWER_BYTES: usize = 16 * 1024;

fn handle(mut request: Request, front: &Front) {
    let method = request.method().clone();
    let url = request.url().to_string();
    // A bug behind one request must not cost a worker thread: the pool would shrink with
    // each, until nothing answers.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        authorize(&request, &url, &front.auth).and_then(|()| answer(&mut request, front))
    }))
    .unwrap_or_else(|_| {
        Err(ApiError::Internal(
            "the server failed answering this request (a bug: the log has details); retry, and report it if it happens again".into(),
        ))
    });
    let response = match result {
        Ok(Reply::File(file, length)) => {
            // Streamed from the file, never read whole: a vmware.log can be large. Only
            // what it held when opened is sent, though VMware may still append to it.
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            let content_type =
                Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..])
                    .map(|h| vec![h])
                    .unwrap_or_default();
            let response = Response::new(
                StatusCode(200),
                content_type,
                file.take(length as u64),
                Some(length),
                None,
            )
            // The length is known: announce it rather than switch to chunks.
            .with_chunked_threshold(usize::MAX);
            return send(request, response, &method, &url, &front.service);
        }
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
    send(request, response, &method, &url, &front.service);
}

fn send<R: Read + Send + 'static>(
    request: Request,
    response: Response<R>,
    method: &Method,
    url: &str,
    service: &Service,
) {
    service.record_http_request(method.as_str(), response.status_code().0);
    if *method == Method::Head {
        let length = response.data_length();
        let response = response.with_data(Cursor::new(Arc::from(&[][..])), length);
        let _ = request.respond(response);
        return;
    }
    if response.data_length().unwrap_or(0) > INLINE_ANSWER_BYTES {
        let spawned = thread::Builder::new()
            .name("http-answer".into())
            .spawn(move || {
                let _ = request.respond(response);
            });
        if let Err(e) = spawned {
            crate::error!("{method} {url}: cannot start a thread to write the answer: {e}");
        }
        return;
    }
    // The client may have gone; nothing to do about it.
    let _ = request.respond(response);
}

enum Reply {
    Json(u16, Arc<[u8]>),
    /// 200 with a text file's first `u64` bytes.
    File(std::fs::File, u64),
    Empty(u16),
    Answer(Answer),
}

/// With a token configured, every endpoint but `/healthz` wants it.
fn authorize(request: &Request, url: &str, auth: &Auth) -> Result<(), ApiError> {
    if super::routes::path(url) == super::routes::HEALTH_PATH {
        return Ok(());
    }
    auth.check(header(request, "Authorization"))
        .map_err(|e| ApiError::Unauthorized(e.to_string()))
}

fn answer(request: &mut Request, front: &Front) -> Result<Reply, ApiError> {
    let (service, auth) = (front.service.as_ref(), &front.auth);
    match action::parse(request)? {
        Action::ListVms(filter) => Ok(Reply::Json(200, join_array(&service.list_where(&filter)))),
        Action::GetVm {
            id,
            known,
            wait,
            progress,
        } => vms::get(service, id, known.as_deref(), wait, progress).map(Reply::Answer),
        Action::VmLog(id) => Ok(service
            .vm_log(id)
            .map(|(file, length)| Reply::File(file, length))?),
        Action::RenewVm { id, ttl } => {
            Ok(Reply::Answer(Answer::json(200, service.renew(id, ttl)?)))
        }
        Action::ListImages => Ok(Reply::Answer(images::list(service))),
        Action::GetImage(checksum) => images::get(service, &checksum).map(Reply::Answer),
        Action::PrewarmImage(spec) => images::prewarm(service, spec).map(Reply::Answer),
        Action::DeleteImage(checksum) => images::delete(service, &checksum).map(Reply::Answer),
        Action::Health => {
            // Without the token a client learns only whether the host is up.
            let detailed = auth.check(header(request, "Authorization")).is_ok();
            Ok(Reply::Answer(ops::health(service, detailed)))
        }
        Action::Metrics => Ok(Reply::Answer(ops::metrics(service))),
        Action::DrainState => Ok(Reply::Answer(ops::drain_state(service))),
        Action::Drain => ops::drain(service).map(Reply::Answer),
        Action::Undrain => ops::undrain(service).map(Reply::Answer),
        Action::OpenApi => Ok(Reply::Answer(super::openapi::get())),
        Action::ListPools => Ok(Reply::Answer(pools::list(service))),
        Action::GetPool(name) => pools::get(service, &name).map(Reply::Answer),
        Action::PutPool { name, spec } => pools::put(service, &name, spec).map(Reply::Answer),
        Action::DeletePool(name) => pools::delete(service, &name).map(Reply::Answer),
        Action::DeleteVm(id) => {
            service.delete(id)?;
            Ok(Reply::Empty(204))
        }
        Action::CreateVm(create) => {
            // A replay answers as the first create did, so a retrying client needs no
            // special case; the VM object shows the state it has reached since.
            match service.create(*create)? {
                Created::New(json) | Created::Existing(json) => Ok(Reply::Json(202, json)),
            }
        }
    }
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
    let content_type = Header::from_bytes(&b"Content-Type"[..], super::answer::JSON.as_bytes())
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
