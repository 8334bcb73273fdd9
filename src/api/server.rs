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
    /// This host's place in a fleet (`--etcd`); `None` for a lone host.
    node: Option<Arc<crate::fleet::Node>>,
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
    pub fn start(
        server: Server,
        threads: usize,
        service: Arc<Service>,
        auth: Auth,
        node: Option<Arc<crate::fleet::Node>>,
    ) -> Self {
        let server = Arc::new(server);
        let front = Arc::new(Front {
            service,
            auth,
            node,
        });
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
        if answers_from_memory(&request, front.node.is_some()) {
            handle(request, front);
        } else if let Err(unsent) = slow.send(request) {
            // Only if every worker is gone; answer here rather than drop the client.
            handle(unsent.into_inner(), front);
        }
    }
}

/// The polls: `GET /vms` and `GET /vms/:id` without `wait`. Long polls wait by design, and
/// `/healthz`, `/metrics` and `/images` run vmrun or walk folders: those go to the pool. In
/// a fleet, `GET /vms` asks every host: it goes to the pool too.
fn answers_from_memory(request: &Request, fleet: bool) -> bool {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return false;
    }
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let list = path.trim_end_matches('/') == "/vms";
    ((list && !fleet) || path.starts_with("/vms/"))
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
    /// 200 with a text file's first `u64` bytes.
    File(std::fs::File, u64),
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
    let node = front.node.as_deref();
    // A VM this host does not hold may be another host's: asked of the fleet.
    let elsewhere = |request: &Request, id, body: Option<&[u8]>| match node {
        Some(node) if service.get(id).is_err() => super::fleet::elsewhere(node, request, id, body),
        _ => Ok(None),
    };
    let answer = match action::parse(request)? {
        Action::ListVms(filter) => {
            let local = service.list_where(&filter);
            match node {
                Some(node) => super::fleet::list(node, request, local, &filter),
                None => Answer::json(200, join_array(&local)),
            }
        }
        Action::GetVm {
            id,
            known,
            wait,
            progress,
        } => match elsewhere(request, id, None)? {
            Some(answer) => answer,
            None => super::fleet::local_vm(
                node,
                vms::get(service, id, known.as_deref(), wait, progress)?,
            ),
        },
        Action::VmLog(id) => match elsewhere(request, id, None)? {
            Some(answer) => answer,
            None => {
                let (file, length) = service.vm_log(id)?;
                return Ok(Reply::File(file, length));
            }
        },
        Action::RenewVm { id, ttl } => {
            let body = ttl.map(|ttl| format!("{{\"ttl\":{ttl}}}").into_bytes());
            match elsewhere(request, id, body.as_deref())? {
                Some(answer) => answer,
                None => super::fleet::local_vm(node, Answer::json(200, service.renew(id, ttl)?)),
            }
        }
        Action::ListImages => images::list(service, node),
        Action::GetImage(checksum) => images::get(service, node, &checksum)?,
        Action::PrewarmImage { spec, scope } => match (node, scope) {
            // A lone host is the whole fleet; a relayed pre-warm is this host's own.
            (Some(node), Some(scope)) if !super::fleet::is_relayed(request) => {
                let authorization = header(request, "Authorization").map(str::to_string);
                images::prewarm_fleet(node, spec, scope, authorization)?
            }
            _ => images::prewarm(service, spec)?,
        },
        Action::DeleteImage(checksum) => images::delete(service, &checksum)?,
        Action::Health => {
            // Without the token a client learns only whether the host is up.
            let detailed = auth.check(header(request, "Authorization")).is_ok();
            let answer = ops::health(service, detailed);
            match node {
                Some(node) if detailed => with_fleet_health(answer, node),
                _ => answer,
            }
        }
        Action::Metrics => {
            let mut answer = ops::metrics(service);
            if let Some(node) = node {
                let text = [&answer.body[..], node.metrics_text().as_bytes()].concat();
                answer.body = Arc::from(text);
            }
            answer
        }
        Action::DrainState => ops::drain_state(service),
        Action::Drain => ops::drain(service)?,
        Action::Undrain => ops::undrain(service)?,
        Action::OpenApi => super::openapi::get(),
        Action::ListPools => pools::list(service),
        Action::GetPool(name) => pools::get(service, &name)?,
        Action::PutPool { name, spec } => pools::put(service, &name, spec)?,
        Action::DeletePool(name) => pools::delete(service, &name)?,
        Action::ListHosts => super::fleet::hosts(node)?,
        Action::DeleteVm(id) => match elsewhere(request, id, None)? {
            Some(answer) => answer,
            None => {
                service.delete(id)?;
                Answer::empty(204)
            }
        },
        Action::CreateVm(create, body) => match node {
            Some(node) => super::fleet::create(node, request, *create, &body)?,
            // A replay answers as the first create did, so a retrying client needs no
            // special case; the VM object shows the state it has reached since.
            None => match service.create(*create)? {
                Created::New(json) | Created::Existing(json) => Answer::json(202, json),
            },
        },
    };
    Ok(Reply::Answer(answer))
}

/// `/healthz` of a fleet member says where it stands with the fleet. Being cut off is not
/// a failure of this host: it still serves its VMs.
fn with_fleet_health(answer: Answer, node: &crate::fleet::Node) -> Answer {
    let Ok(mut health) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
        return answer;
    };
    let mut fleet = serde_json::to_value(node.standing()).unwrap_or_default();
    fleet["host"] = node.name.clone().into();
    fleet["hosts"] = node.view.host_count().into();
    health["fleet"] = fleet;
    Answer::json_value(answer.status, &health)
}

pub(crate) fn join_array<T: AsRef<[u8]>>(items: &[T]) -> Arc<[u8]> {
    let len = items.iter().map(|i| i.as_ref().len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
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
