//! Finding and reaching the Docker daemon: its address (`[plugins.docker].config.host`, else
//! `DOCKER_HOST`, else the default socket), the connection with the API version negotiated
//! down to what the daemon speaks, and errors that say which address was tried, where it came
//! from and what to do, and reaching it during `Init` ([`block_on_fresh_runtime`]). The swarm
//! plugin reaches its manager through this module too, with its own plugin name in the
//! messages ([`Address::resolve_for`]).

use std::fmt;
use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, Docker};

/// Where the daemon is when nothing says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long a request may wait for the daemon's answer to start. Streams (logs, wait, pull
/// progress) answer at once; a long upload of a big workspace is what this must allow for.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// How long the daemon gets to answer at plugin start before it counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The oldest Engine API hm uses: `wait?condition=` came in 1.30 (Docker 17.06).
const MIN_API: (usize, usize) = (1, 30);

/// Which setting named the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Env,
    Default,
}

/// The daemon's address, where it came from, and the plugin whose `[plugins.NAME].config.host`
/// the messages name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub url: String,
    pub source: Source,
    pub plugin: &'static str,
}

impl Address {
    /// `[plugins.docker].config.host` if set, else `DOCKER_HOST`, else the default socket.
    pub fn resolve(config_host: Option<&str>) -> Self {
        Self::resolve_for(crate::NAME, config_host)
    }

    /// [`Address::resolve`] for plugin `plugin`: `[plugins.<plugin>].config.host` if set, else
    /// `DOCKER_HOST`, else the default socket.
    pub fn resolve_for(plugin: &'static str, config_host: Option<&str>) -> Self {
        Self {
            plugin,
            ..Self::resolve_with(config_host, std::env::var("DOCKER_HOST").ok().as_deref())
        }
    }

    fn resolve_with(config_host: Option<&str>, env: Option<&str>) -> Self {
        let (url, source) = match (config_host, env) {
            (Some(host), _) => (host, Source::Config),
            (None, Some(host)) if !host.is_empty() => (host, Source::Env),
            _ => (DEFAULT_HOST, Source::Default),
        };
        // A bare socket path is what people often mean.
        let url = if url.starts_with('/') {
            format!("unix://{url}")
        } else {
            url.to_owned()
        };
        Self {
            url,
            source,
            plugin: crate::NAME,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::Config => write!(
                f,
                "{} (from [plugins.{}].config.host)",
                self.url, self.plugin
            ),
            Source::Env => write!(f, "{} (from DOCKER_HOST)", self.url),
            Source::Default => write!(f, "{} (the default)", self.url),
        }
    }
}

/// Accepts the addresses this plugin can reach: `unix://PATH` (or a bare absolute path),
/// `tcp://HOST:PORT` and `http://HOST:PORT`. TLS and SSH are not built in, to keep the
/// dependency tree small.
pub fn check_scheme(host: &str) -> Result<(), String> {
    if host.starts_with('/')
        || ["unix://", "tcp://", "http://"]
            .iter()
            .any(|s| host.starts_with(s))
    {
        return Ok(());
    }
    match host.split_once("://") {
        Some((scheme, _)) => Err(format!(
            "{scheme}:// addresses are not supported ({host}); hm talks to Docker over unix:// \
             sockets and plain tcp:// (for a remote or TLS daemon, forward its socket locally)"
        )),
        None => Err(format!(
            "{host:?} is not a Docker daemon address (expected unix:///path/to/docker.sock or \
             tcp://host:port)"
        )),
    }
}

/// The daemon could not be reached or used: hm exits 4 (environment unavailable).
#[derive(Debug, Clone)]
pub struct Unreachable {
    pub address: Address,
    pub cause: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach the Docker daemon at {}: {}\n  hint: start the Docker daemon (or \
             check that this user may use its socket), or point DOCKER_HOST or \
             [plugins.{}].config.host at a daemon that is running",
            self.address, self.cause, self.address.plugin
        )
    }
}

/// A client for `address`, its API version negotiated down to the daemon's; fails unless the
/// daemon answers within [`PING_TIMEOUT`].
pub async fn connect(address: &Address) -> Result<Docker, Unreachable> {
    let unreachable = |cause: String| Unreachable {
        address: address.clone(),
        cause,
    };
    check_scheme(&address.url).map_err(&unreachable)?;
    let docker = if address.url.starts_with("unix://") {
        Docker::connect_with_unix(&address.url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(&address.url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    }
    .map_err(|e| unreachable(describe(&e)))?;
    let answered = tokio::time::timeout(PING_TIMEOUT, async {
        docker.ping().await?;
        docker.negotiate_version().await
    })
    .await;
    let docker = match answered {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => return Err(unreachable(describe(&e))),
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {}s",
                PING_TIMEOUT.as_secs()
            )));
        }
    };
    let version = docker.client_version();
    if (version.major_version, version.minor_version) < MIN_API {
        return Err(unreachable(format!(
            "the daemon speaks Engine API {}.{}, older than the {}.{} hm needs (Docker 17.06)",
            version.major_version, version.minor_version, MIN_API.0, MIN_API.1
        )));
    }
    Ok(docker)
}

/// Runs `future` (connecting, sweeping) to its end during `Init` and returns its result.
/// `Init` is answered synchronously, on the plugin's only runtime thread, which can neither
/// drive a future it waits for nor start a runtime of its own: the future runs on a
/// current-thread runtime of its own, on a thread of its own. That runtime is gone when this
/// returns; a bollard client made on it still works on the plugin's runtime, as it keeps no
/// connection open (bollard pools none). `what` is what the future reaches, for the messages:
/// "Docker", "the swarm manager".
pub fn block_on_fresh_runtime<T: Send>(
    what: &str,
    future: impl Future<Output = Result<T, String>> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime to reach {what}: {e}"))?;
                runtime.block_on(future)
            })
            .join()
            .map_err(|_| format!("the connection to {what} panicked"))?
    })
}

/// A bollard error in words: the daemon's own message, or the innermost cause of a transport
/// failure ("Connection refused (os error 111)") rather than the client's wrapping of it.
pub fn describe(error: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match error {
        E::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        E::SocketNotFoundError(path) => format!("there is no socket at {path}"),
        E::RequestTimeoutError => "the daemon did not answer in time".to_owned(),
        other => {
            let mut innermost: &dyn std::error::Error = other;
            while let Some(source) = innermost.source() {
                innermost = source;
            }
            innermost.to_string()
        }
    }
}

/// Whether the daemon answered a request with HTTP `status`.
pub fn is_status(error: &bollard::errors::Error, status: u16) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wins_over_docker_host_which_wins_over_the_default() {
        let r = Address::resolve_with;
        assert_eq!(
            r(Some("tcp://a:1"), Some("unix:///b")),
            Address {
                url: "tcp://a:1".into(),
                source: Source::Config,
                plugin: "docker",
            }
        );
        assert_eq!(r(None, Some("unix:///b")).source, Source::Env);
        assert_eq!(r(None, Some("")).source, Source::Default);
        assert_eq!(r(None, None).url, DEFAULT_HOST);
        assert_eq!(r(None, Some("/run/d.sock")).url, "unix:///run/d.sock");
    }

    #[test]
    fn only_unix_and_plain_tcp_are_supported() {
        for ok in ["unix:///x", "/x", "tcp://h:2375", "http://h:2375"] {
            assert_eq!(check_scheme(ok), Ok(()), "{ok}");
        }
        assert!(check_scheme("ssh://u@h").unwrap_err().contains("ssh://"));
        assert!(check_scheme("https://h").unwrap_err().contains("https://"));
        assert!(
            check_scheme("docker.sock")
                .unwrap_err()
                .contains("not a Docker daemon")
        );
    }

    /// As `Init` calls it: on a runtime's only thread, which the future cannot use.
    #[tokio::test]
    async fn init_work_runs_beside_the_plugins_runtime() {
        let slept = block_on_fresh_runtime("a timer", async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(7)
        });
        assert_eq!(slept, Ok(7));
        let failed = block_on_fresh_runtime::<()>("Docker", async { Err("refused".into()) });
        assert_eq!(failed, Err("refused".to_owned()));
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_address_and_the_fix() {
        let address = Address::resolve_with(None, Some("unix:///nonexistent/hm-test.sock"));
        let e = connect(&address).await.unwrap_err().to_string();
        assert!(
            e.contains("unix:///nonexistent/hm-test.sock (from DOCKER_HOST)"),
            "{e}"
        );
        assert!(e.contains("no socket at /nonexistent/hm-test.sock"), "{e}");
        assert!(e.contains("hint: start the Docker daemon"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_tcp_connection_says_so() {
        // Port 1 on loopback: nothing listens there.
        let address = Address::resolve_with(Some("tcp://127.0.0.1:1"), None);
        let e = connect(&address).await.unwrap_err().to_string();
        assert!(
            e.contains("tcp://127.0.0.1:1 (from [plugins.docker].config.host)"),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }
}
