//! The files a swarm task exchanges with hm, over HTTP: the node running a task has no access
//! to hm's machine, so the plugin serves, on an address every node reaches, the workspace
//! archive and the artifacts of the steps the task's step needs, and takes back what the step
//! made (its artifacts as a tar, its outputs file). The task's prelude ([`crate::prelude`])
//! does the fetching and sending with the image's `curl` or `wget` and `tar`.
//!
//! Every path is `/<run token>/<attempt key>/<what>`: a random token per run and a random key
//! per attempt, so that nothing is served to whoever does not have the URL the attempt's task
//! was given, and no task can send files for another. An attempt's files are served only while
//! the attempt is registered ([`Exchange`]).
//!
//! | request | answer |
//! |---|---|
//! | `GET workspace` | the workspace archive (hm's shared buffer, sent as it is) |
//! | `GET artifacts` | the artifacts of the steps it needs, as a tar |
//! | `POST started` | 204: the task has its workspace and runs the step now |
//! | `POST outputs` | 204: the step's `$HM_OUTPUT` file, at most 1 MiB and one byte read |
//! | `POST artifacts` | 204: a tar of the roots of the step's artifact globs, filtered here |

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdListener, UdpSocket};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::read::DecoderReader;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hm_plugin_docker::artifacts::{Collector, Stop};
use hm_plugin_docker::outputs::READ_CAP;
use hm_sdk::artifacts::contained;
use hm_sdk::{SealedBuffer, StepContext, StepError, StepRequest};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::io::{StreamReader, SyncIoBridge};

type Body = Full<Bytes>;

/// Where to serve: `configured` (`[plugins.swarm].config.serve`) if set; else, for a manager
/// reached over TCP, this machine's address on the route to it; else the address the
/// manager's node gives the swarm (`node_addr`: hm runs on the manager). With why, for errors.
pub fn choose_address(
    configured: Option<SocketAddr>,
    manager_url: &str,
    node_addr: Option<&str>,
) -> Result<(SocketAddr, &'static str), String> {
    if let Some(address) = configured {
        return Ok((address, "[plugins.swarm].config.serve"));
    }
    let remote = manager_url
        .strip_prefix("tcp://")
        .or_else(|| manager_url.strip_prefix("http://"));
    if let Some(remote) = remote {
        let remote = remote.trim_end_matches('/');
        let route = (|| {
            let target = std::net::ToSocketAddrs::to_socket_addrs(remote)?
                .next()
                .ok_or_else(|| io::Error::other("it has no address"))?;
            let unspecified: IpAddr = if target.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((unspecified, 0))?;
            socket.connect(target)?;
            Ok::<_, io::Error>(socket.local_addr()?.ip())
        })();
        return route
            .map(|ip| {
                (
                    SocketAddr::new(ip, 0),
                    "this machine's address towards the manager",
                )
            })
            .map_err(|e| {
                format!(
                    "cannot find this machine's address towards the swarm manager {remote}: {e}\n  \
                     hint: set [plugins.swarm].config.serve to an address of this machine \
                     that every node of the swarm reaches"
                )
            });
    }
    match node_addr.and_then(|addr| addr.parse::<IpAddr>().ok()) {
        Some(ip) => Ok((SocketAddr::new(ip, 0), "the manager node's swarm address")),
        None => Err(
            "the swarm manager does not say which address its node has in the swarm\n  \
                     hint: set [plugins.swarm].config.serve to an address of this machine that \
                     every node of the swarm reaches"
                .into(),
        ),
    }
}

/// The plugin's file server: bound when the plugin starts (so a wrong address fails the run
/// before any step), serving from the first step on.
pub struct FileServer {
    /// The address the tasks are given (the bound one, with the port the system chose).
    address: SocketAddr,
    token: String,
    serving: Mutex<Serving>,
    attempts: Arc<Mutex<HashMap<String, Arc<Exchange>>>>,
}

impl FileServer {
    /// Binds `address` (port 0: any free one); `why` says where it came from, for the error.
    pub fn bind(address: SocketAddr, why: &str) -> Result<Self, String> {
        let bound = (|| {
            let listener = StdListener::bind(address)?;
            listener.set_nonblocking(true)?;
            let address = listener.local_addr()?;
            Ok::<_, io::Error>((listener, address, random_hex()?))
        })();
        let (listener, address, token) = bound.map_err(|e| {
            format!(
                "cannot serve the swarm tasks their files on {address} ({why}): {e}\n  hint: \
                 set [plugins.swarm].config.serve to an address of this machine that every \
                 node of the swarm reaches"
            )
        })?;
        Ok(Self {
            address,
            token,
            serving: Mutex::new(Serving::NotYet(listener)),
            attempts: Arc::default(),
        })
    }

    /// Registers one attempt of `step`: its workspace and the artifacts of the steps it needs
    /// (asked of hm now), and what it is to send back. Starts serving on the first call, on
    /// the plugin's runtime.
    pub async fn register(
        &self,
        step: &StepRequest,
        ctx: &StepContext,
    ) -> Result<Registered, StepError> {
        self.serve().map_err(|e| {
            StepError::Message(format!(
                "cannot serve the workspace on {}: {e}",
                self.address
            ))
        })?;
        let workspace = Bytes::from_owner(ctx.open_archive().await?);
        let needs = ctx.open_artifacts().await?.map(Bytes::from_owner);
        let collector = if step.artifacts.is_empty() {
            None
        } else {
            Some(Collector::new(step)?)
        };
        // Bad globs: nothing is sent, and hm is told the problem once the step has passed.
        let roots = match &collector {
            Some(Ok(collector)) => Some(collector.roots().to_vec()),
            Some(Err(_)) | None => None,
        };
        let exchange = Arc::new(Exchange {
            workspace,
            needs,
            started: Mutex::new(false),
            outputs: Mutex::new(None),
            artifacts: Mutex::new(match collector {
                Some(Ok(collector)) => Artifacts::Expected(collector),
                Some(Err(problem)) => Artifacts::Received(Ok(Received::Problem(problem))),
                None => Artifacts::None,
            }),
        });
        let key = random_hex().map_err(|e| {
            StepError::Message(format!("cannot make a key for the step's files: {e}"))
        })?;
        let url = format!("http://{}/{}/{key}", self.address, self.token);
        self.attempts().insert(key.clone(), exchange.clone());
        Ok(Registered {
            attempts: self.attempts.clone(),
            key,
            url,
            roots,
            exchange,
        })
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exchange>>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the accept loop, once; a listener that could not be taken over stays an error.
    fn serve(&self) -> Result<(), String> {
        let mut serving = lock(&self.serving);
        let listener = match std::mem::replace(&mut *serving, Serving::Started) {
            Serving::NotYet(listener) => listener,
            Serving::Started => return Ok(()),
            Serving::Failed(e) => {
                *serving = Serving::Failed(e.clone());
                return Err(e);
            }
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                *serving = Serving::Failed(e.to_string());
                return Err(e.to_string());
            }
        };
        let routes = Routes {
            token: self.token.clone(),
            attempts: self.attempts.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let routes = routes.clone();
                        async move { Ok::<_, Infallible>(routes.answer(request).await) }
                    });
                    // A task that hangs up mid-request has only itself to blame: the step's
                    // verdict says what did not arrive.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(())
    }
}

/// Whether the accept loop runs.
enum Serving {
    /// Bound at `Init`; taken over by the first step.
    NotYet(StdListener),
    Started,
    Failed(String),
}

/// One attempt's files.
struct Exchange {
    workspace: Bytes,
    /// The artifacts of the steps it needs, if they have any.
    needs: Option<Bytes>,
    started: Mutex<bool>,
    /// What the task sent of its output file.
    outputs: Mutex<Option<Vec<u8>>>,
    artifacts: Mutex<Artifacts>,
}

enum Artifacts {
    /// The step has no `artifacts`.
    None,
    /// Not sent yet.
    Expected(Collector),
    /// Being read.
    Receiving,
    Received(Result<Received, String>),
}

/// What came of the artifacts the task sent.
pub enum Received {
    Tar(SealedBuffer),
    /// Why there is no tar, for hm to fail the step with (cause `artifact`).
    Problem(String),
}

/// An attempt's place on the server, until it is dropped.
pub struct Registered {
    attempts: Arc<Mutex<HashMap<String, Arc<Exchange>>>>,
    key: String,
    /// `http://<address>/<token>/<key>`, for the task.
    pub url: String,
    /// The roots of the step's artifact globs (`""`: the whole workspace), if it has
    /// artifacts.
    pub roots: Option<Vec<String>>,
    exchange: Arc<Exchange>,
}

impl Registered {
    /// Whether the steps it needs have artifacts for the task to fetch.
    pub fn has_needs(&self) -> bool {
        self.exchange.needs.is_some()
    }

    /// Whether the task got its workspace and started the step.
    pub fn started(&self) -> bool {
        *lock(&self.exchange.started)
    }

    /// What the task sent of the step's output file; `None` if it sent nothing.
    pub fn take_outputs(&self) -> Option<Vec<u8>> {
        lock(&self.exchange.outputs).take()
    }

    /// What came of the step's artifacts: `None` for a step without artifacts; an error if
    /// the task did not send them (or they could not be read).
    pub fn take_artifacts(&self) -> Option<Result<Received, String>> {
        let mut artifacts = lock(&self.exchange.artifacts);
        match std::mem::replace(&mut *artifacts, Artifacts::None) {
            Artifacts::None => None,
            Artifacts::Expected(_) => Some(Err("the task did not send them".into())),
            Artifacts::Receiving => Some(Err("the task had not finished sending them".into())),
            Artifacts::Received(received) => Some(received),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.attempts).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request handler's view of the server.
#[derive(Clone)]
struct Routes {
    token: String,
    attempts: Arc<Mutex<HashMap<String, Arc<Exchange>>>>,
}

impl Routes {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let mut parts = path.trim_start_matches('/').splitn(3, '/');
        let (Some(token), Some(key), Some(what)) = (parts.next(), parts.next(), parts.next())
        else {
            return status(StatusCode::NOT_FOUND);
        };
        let exchange = (token == self.token)
            .then(|| lock(&self.attempts).get(key).cloned())
            .flatten();
        // Anything else is one answer, whatever was wrong: nothing is given away.
        let Some(exchange) = exchange else {
            return status(StatusCode::NOT_FOUND);
        };
        match (request.method(), what) {
            (&Method::GET, "workspace") => body(exchange.workspace.clone()),
            (&Method::GET, "artifacts") => match &exchange.needs {
                Some(needs) => body(needs.clone()),
                None => status(StatusCode::NOT_FOUND),
            },
            (&Method::POST, "started") => {
                *lock(&exchange.started) = true;
                status(StatusCode::NO_CONTENT)
            }
            (&Method::POST, "outputs") => match read_outputs(request).await {
                Ok(outputs) => {
                    *lock(&exchange.outputs) = Some(outputs);
                    status(StatusCode::NO_CONTENT)
                }
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, "artifacts") => receive_artifacts(&exchange, request).await,
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

/// The header a task sends a base64-encoded body with (`wget`'s way, see [`crate::prelude`]).
const ENCODING: &str = "x-hm-encoding";

fn is_base64(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(ENCODING)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"base64"))
}

/// The outputs the task sent, at most [`READ_CAP`] bytes of them (hm tells a step that wrote
/// more than its limit by the one byte past it); the rest is read and dropped, so the task
/// sees its request answered rather than cut.
async fn read_outputs(request: Request<Incoming>) -> Result<Vec<u8>, String> {
    let base64 = is_base64(&request);
    let cap = READ_CAP as usize;
    // Base64 takes 4 bytes for 3, and lines: twice the cap holds more than `cap` bytes.
    let take = if base64 { cap * 2 } else { cap };
    let mut body = request.into_body();
    let mut content = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            let room = take.saturating_sub(content.len());
            content.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    if base64 {
        content.retain(|b| !b.is_ascii_whitespace());
        // A body cut at the cap ends mid-quantum: only whole ones are decoded.
        content.truncate(content.len() / 4 * 4);
        content = base64::engine::general_purpose::STANDARD
            .decode(&content)
            .map_err(|e| e.to_string())?;
        content.truncate(cap);
    }
    Ok(content)
}

/// Reads the task's tar of its artifact roots into the step's collector, as it arrives (on a
/// blocking thread: the tar crate reads synchronously). Entries are named relative to the
/// workspace.
async fn receive_artifacts(exchange: &Arc<Exchange>, request: Request<Incoming>) -> Response<Body> {
    let base64 = is_base64(&request);
    let collector = {
        let mut artifacts = lock(&exchange.artifacts);
        match std::mem::replace(&mut *artifacts, Artifacts::Receiving) {
            Artifacts::Expected(collector) => collector,
            // Sent twice, or never asked for: the first answer stands.
            other => {
                *artifacts = other;
                return status(StatusCode::CONFLICT);
            }
        }
    };
    let stream = BodyDataStream::new(request.into_body()).map_err(io::Error::other);
    let bridge = SyncIoBridge::new(StreamReader::new(stream));
    let read = tokio::task::spawn_blocking(move || {
        let mut reader: Box<dyn Read> = if base64 {
            Box::new(DecoderReader::new(
                WithoutLineBreaks(bridge),
                &base64::engine::general_purpose::STANDARD,
            ))
        } else {
            Box::new(bridge)
        };
        let mut collector = collector;
        let taken = collector.take(&mut reader, |entry| {
            contained(entry).and_then(|path| path.to_str().map(str::to_owned))
        });
        match taken {
            Ok(()) => collector
                .finish()
                .map(Received::Tar)
                .map_err(|e| e.to_string()),
            Err(Stop::Limit(problem)) => {
                // The rest is not wanted, but read, so that the task sees its request answered.
                let _ = io::copy(&mut reader, &mut io::sink());
                Ok(Received::Problem(problem))
            }
            Err(Stop::Io(e)) => Err(format!("cannot read the tar the task sent: {e}")),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("the reader of the task's artifacts failed: {e}")));
    let answer = if read.is_ok() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
    };
    *lock(&exchange.artifacts) = Artifacts::Received(read);
    status(answer)
}

/// A reader that drops the line breaks of what it reads (a base64 tool's lines).
struct WithoutLineBreaks<R>(R);

impl<R: Read> Read for WithoutLineBreaks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.0.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                if buf[i] != b'\n' && buf[i] != b'\r' {
                    buf[kept] = buf[i];
                    kept += 1;
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = code;
    response
}

fn body(bytes: Bytes) -> Response<Body> {
    Response::new(Full::new(bytes))
}

/// 128 random bits as hex, from the kernel's generator.
fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
