use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{HTTPVersion, Method};
use crate::limits::{error_body, BodyState, Deadline, Limits};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    limits: Arc<Limits>,

    // when reads on the socket stop waiting for the client
    deadline: Deadline,

    // what the previous request's handler left of its body
    previous_body: Option<Arc<BodyState>>,

    // the previous request's body was left to its handler (over `max_buffered_body`)
    previous_left_body: bool,

    // true once `close_gracefully` has run
    closed: bool,

    // the last request took the connection over (`Connection: upgrade`)
    upgraded: bool,
    /// Whether a request head has been read on this connection yet.
    served: bool,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// Nothing of a next request arrived: the connection closes without an answer.
    Idle,
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// Answered with this status and JSON error, then the connection closes.
    Refused {
        status: u16,
        code: &'static str,
        message: String,
    },
    ReadIoError(IoError),
}

/// How long the connection keeps reading (and throwing away) what a client still sends
/// after an error answer, before it closes: closing with unread data resets the
/// connection, and a reset can destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<Limits>,
        deadline: Deadline,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            deadline,
            previous_body: None,
            previous_left_body: false,
            closed: false,
            upgraded: false,
            served: false,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source, without its line end (CRLF, or
    /// a lone LF), at most `max` bytes long and within what is `left` of the head.
    fn read_next_line(
        &mut self,
        first: Option<u8>,
        max: usize,
        left: &mut usize,
        too_long: fn(&Limits) -> ReadError,
    ) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut next = first.map(Ok);

        loop {
            let byte = match next.take() {
                Some(b) => b,
                None => match self.next_header_source.by_ref().bytes().next() {
                    Some(b) => b,
                    None => {
                        return Err(ReadError::ReadIoError(IoError::new(
                            ErrorKind::ConnectionAborted,
                            "Unexpected EOF",
                        )))
                    }
                },
            };
            let byte = byte.map_err(ReadError::ReadIoError)?;

            if byte == b'\n' {
                if buf.last() == Some(&b'\r') {
                    buf.pop(); // removing the '\r'
                }
                return AsciiString::from_ascii(buf).map_err(|_| ReadError::Refused {
                    status: 400,
                    code: "invalid-request",
                    message: "the request line and header fields must be ASCII; percent-encode other characters"
                        .into(),
                });
            }

            if *left == 0 {
                return Err(head_too_large(&self.limits));
            }
            *left -= 1;
            if buf.len() >= max {
                return Err(too_long(&self.limits));
            }

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let mut left = self.limits.max_head_bytes;

        // The head's deadline starts with its first byte; until then the connection is
        // idle, and is closed quietly when it stays so. Empty lines before a request are
        // skipped (RFC 7230 3.5).
        // A new connection has `first_request_timeout` for its whole first head, from the
        // accept: one that sends nothing, or a byte at a time, holds a place that long.
        let first_request = !self.served;
        self.served = true;
        if first_request {
            self.deadline.set(self.limits.first_request_timeout);
        } else {
            self.deadline.set(self.limits.idle_timeout);
        }
        let first = loop {
            match self.next_header_source.by_ref().bytes().next() {
                Some(Ok(b'\r')) | Some(Ok(b'\n')) if left > 0 => left -= 1,
                Some(Ok(byte)) => break byte,
                Some(Err(_)) | None => return Err(ReadError::Idle),
            }
        };
        if !first_request {
            self.deadline.set(self.limits.head_timeout);
        }

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let max = self.limits.max_request_line;
                let line = self.read_next_line(Some(first), max, &mut left, uri_too_long)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers: Vec<crate::Header> = Vec::new();
                loop {
                    let max = self.limits.max_head_bytes;
                    let line = self.read_next_line(None, max, &mut left, head_too_large)?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= self.limits.max_headers {
                        return Err(ReadError::Refused {
                            status: 431,
                            code: "headers-too-large",
                            message: format!(
                                "the request has more than {} header fields",
                                self.limits.max_headers
                            ),
                        });
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let has_body = headers
            .iter()
            .any(|h| h.field.equiv("Content-Length") || h.field.equiv("Transfer-Encoding"));
        if has_body {
            self.deadline.set(self.limits.body_timeout);
        }
        let body_state = BodyState::new(0);
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            // peer_addr() fails for a client that reset the connection at once.
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            writer,
            &self.limits,
            &body_state,
        );
        if has_body {
            self.deadline.clear();
        }
        let request = request.map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::Refused {
                    status,
                    code,
                    message,
                } => ReadError::Refused {
                    status,
                    code,
                    message,
                },
            }
        })?;
        self.previous_left_body = body_state.unread() > 0;
        self.previous_body = Some(body_state.clone());

        // return the request
        Ok(request.with_drop_notify(body_state))
    }

    /// Skips what the previous request's handler left of its body. False when the
    /// connection cannot be reused: too much was left, its end is unknown, or the client
    /// does not send it in time.
    fn skip_previous_body(&mut self) -> bool {
        let unread = match self.previous_body.take() {
            Some(state) => state.unread(),
            None => return true,
        };
        if unread == 0 {
            return true;
        }
        if unread > self.limits.max_drain {
            return false;
        }
        self.deadline.set(self.limits.body_timeout);
        let mut left = unread;
        let mut buf = [0u8; 4096];
        let skipped = loop {
            if left == 0 {
                break true;
            }
            let want = left.min(buf.len());
            match self.next_header_source.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break false,
                Ok(n) => left -= n,
            }
        };
        self.deadline.clear();
        skipped
    }

    /// Writes a JSON error answer, then closes the connection.
    fn answer_error(&mut self, version: HTTPVersion, status: u16, code: &str, message: &str) {
        use crate::{Response, StatusCode};

        let writer = self.sink.next().unwrap();
        let mut response =
            Response::from_string(error_body(code, message)).with_status_code(StatusCode(status));
        for header in json_close_headers() {
            response.add_header(header);
        }
        response.raw_print(writer, version, &[], false, None).ok();
        self.close_gracefully();
    }

    /// Ends the connection after what was written: FIN first, then reads what the client
    /// still sends for a moment (see `LINGER`).
    fn close_gracefully(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.no_more_requests = true;
        self.sink.with_writer(|writer| {
            writer.flush().ok();
            writer.get_mut().shutdown_write();
        });
        self.deadline.set(LINGER.min(self.limits.io_timeout));
        let mut left = LINGER_BYTES;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let want = left.min(buf.len());
            match self.next_header_source.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n,
            }
        }
        self.deadline.clear();
    }
}

fn json_close_headers() -> Vec<crate::Header> {
    [
        (&b"Content-Type"[..], &b"application/json; charset=utf-8"[..]),
        (&b"Connection"[..], &b"close"[..]),
    ]
    .iter()
    .filter_map(|(field, value)| crate::Header::from_bytes(*field, *value).ok())
    .collect()
}

fn uri_too_long(limits: &Limits) -> ReadError {
    ReadError::Refused {
        status: 414,
        code: "uri-too-long",
        message: format!(
            "the request line is longer than {} bytes",
            limits.max_request_line
        ),
    }
}

fn head_too_large(limits: &Limits) -> ReadError {
    ReadError::Refused {
        status: 431,
        code: "headers-too-large",
        message: format!(
            "the request's header fields are larger than {} bytes",
            limits.max_head_bytes
        ),
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // What the client sent that nobody read (a body the handler refused unread,
            // say) must not reset the connection before the client has the answer.
            if !self.upgraded {
                self.close_gracefully();
            }
            return None;
        }

        // One request per connection in the handlers' hands at a time: pipelining cannot
        // tie them all up. The next request is read at once but handed out only once the
        // previous one is dropped; without pipelining that happened long before.
        let previous = self.previous_body.clone();
        if self.previous_left_body {
            // What is left of a body is known once its reader is dropped; the next request
            // starts after it.
            if let Some(previous) = &previous {
                previous.wait_dropped();
            }
        }
        if !self.skip_previous_body() {
            self.close_gracefully();
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::Idle) => return None,

                Err(ReadError::WrongRequestLine) => {
                    self.answer_error(
                        HTTPVersion(1, 1),
                        400,
                        "invalid-request",
                        "the request line must be METHOD /path HTTP/1.1",
                    );
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.answer_error(
                        ver,
                        400,
                        "invalid-request",
                        "a header line is not \"Name: value\"",
                    );
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    self.answer_error(
                        HTTPVersion(1, 1),
                        408,
                        "request-timeout",
                        "the request did not arrive in time; send it at once",
                    );
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    self.answer_error(
                        ver,
                        417,
                        "expectation-failed",
                        "the only Expect value understood is 100-continue",
                    );
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::Refused {
                    status,
                    code,
                    message,
                }) => {
                    self.answer_error(HTTPVersion(1, 1), status, code, &message);
                    return None;
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };
            if let Some(previous) = &previous {
                previous.wait_dropped();
            }

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let mut response = Response::from_string(error_body(
                    "http-version-not-supported",
                    "This server only supports HTTP versions 1.0 and 1.1",
                ))
                .with_status_code(StatusCode(505));
                for header in json_close_headers() {
                    response.add_header(header);
                }
                // Through the request's own writer, so that dropping the request does not
                // answer a second time.
                response
                    .raw_print(rq.into_writer(), HTTPVersion(1, 1), &[], false, None)
                    .ok();
                // The request's body, if any, was not read: where the next one starts is
                // not known.
                self.previous_body = None;
                self.close_gracefully();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => {
                    self.no_more_requests = true;
                    self.upgraded = true;
                }
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
