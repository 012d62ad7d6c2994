//! A real image registry for the tests that pull: Debian's `docker-registry` (the CNCF
//! distribution server) serving plain HTTP on a free loopback port, which the Docker daemon
//! pulls from without TLS (loopback registries are insecure-allowed by default). Nothing can be
//! pulled from the internet on the project's machines; this is how a pull is tested anyway.
//!
//! [`Registry`] starts the server on a temporary storage directory; [`Registry::publish`] pushes
//! a local image to it and removes the pushed name again, so the next use of that name must
//! pull. Dropping the registry stops the server and removes its storage and every image name
//! it published, also when the test fails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::docker::docker;

/// Where Debian's `docker-registry` installs the server.
pub const REGISTRY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    server: Child,
    address: String,
    _storage: tempfile::TempDir,
    published: Mutex<Vec<String>>,
}

impl Registry {
    /// Starts a registry, or returns `None` (after saying why) when `docker-registry` is not
    /// installed; with `HM_REQUIRE_DOCKER=1` that fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        if !Path::new(REGISTRY).exists() {
            let reason = format!("{REGISTRY} is missing: apt-get install docker-registry");
            crate::docker::skip(test, &reason);
            return None;
        }
        let storage = tempfile::Builder::new()
            .prefix("hm-e2e-registry-")
            .tempdir()
            .expect("create the registry's storage");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {address}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("write the registry's config");
        let server = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            server,
            address,
            _storage: storage,
            published: Mutex::new(Vec::new()),
        };
        registry.wait_until_it_answers();
        Some(registry)
    }

    fn wait_until_it_answers(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within 30 s",
                self.address
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pushes local image `image` to the registry as `<registry>/hm-e2e/<name>:1` and removes
    /// that name locally: the returned reference is in the registry only, to be pulled.
    pub fn publish(&self, image: &str, name: &str) -> String {
        let reference = format!("{}/hm-e2e/{name}:1", self.address);
        if let Ok(mut published) = self.published.lock() {
            published.push(reference.clone());
        }
        let tag = docker(&["tag", image, &reference]);
        assert!(tag.status.success(), "docker tag: {tag:?}");
        let push = docker(&["push", &reference]);
        assert!(push.status.success(), "docker push: {push:?}");
        let untag = docker(&["rmi", &reference]);
        assert!(untag.status.success(), "docker rmi: {untag:?}");
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // What a run pulled; never a panic here, as this may run while a test unwinds.
        let published = self.published.lock().map(|p| p.clone()).unwrap_or_default();
        for reference in published {
            let _ = Command::new("docker")
                .args(["rmi", "-f", &reference])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
