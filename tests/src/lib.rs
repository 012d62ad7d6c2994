//! Support for the end-to-end tests: find the `hm` binary, build throwaway projects (an `hm.toml`,
//! files, fixture plugin bundles), run `hm` on them with every wait bounded, read its
//! `--format json` event stream (whole or as it arrives), and find processes a test left behind.
//! The fixture plugins in `src/bin/` share [`fixture`]: output that hm provably has before they
//! misbehave.
//!
//! Everything goes through the real binary, as a user or a CI system would run it. Each `hm`
//! gets a hermetic environment: its own empty `XDG_DATA_HOME`/`XDG_STATE_HOME` (so plugins
//! installed on the machine do not leak in), no `GITHUB_ACTIONS`, no `HM_LOG`, `NO_COLOR=1`.

pub mod cgroups;
pub mod docker;
pub mod registry;
pub mod schema;
pub mod swarm;
pub mod vm;

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
pub use serde_json::Value;

/// The longest any one `hm` invocation may take before a test gives up on it (and kills it).
/// Every pipeline in the suite finishes in a few seconds; this only bounds a hang.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// The step environment variable that carries a test's process marker (see [`marker`]).
pub const MARKER_VAR: &str = "HM_E2E_MARKER";

/// How long processes get to disappear after `hm` has exited: SIGKILL is delivered
/// asynchronously, so a process can stay visible in /proc for a moment after `kill` returned.
const PROCESS_EXIT_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(5);

// ---- the hm binary ----

/// The `hm` binary under test: `$HM_BIN` if set, else `hm` next to the directory holding the
/// running test executable (`target/<profile>/deps/<test>` → `target/<profile>/hm`).
pub fn hm_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HM_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "HM_BIN={} is not a file", path.display());
        return path;
    }
    workspace_executable(
        "hm",
        "Run the end-to-end tests with `cargo test --workspace` (or together with `-p \
         hm-kernel`), which builds `hm` first, or point HM_BIN at an hm binary.",
    )
}

/// An executable of another package of this workspace (`hm`, a first-party plugin) where cargo
/// put it: next to the directory holding the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). `cargo test --workspace` builds
/// every package's executables before any test runs; `how_to_build` says what to do otherwise.
pub fn workspace_executable(name: &str, how_to_build: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(name));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "{name} was not found next to {} (looked for {}).\n{how_to_build}",
            exe.display(),
            candidate.map_or_else(|| "<none>".to_owned(), |p| p.display().to_string()),
        ),
    }
}

/// The root of this repository (the workspace), for files the tests read: examples, schemas.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

// ---- markers and processes ----

/// A string unique to one test, to find the processes it started: put it in a step's `env`
/// under [`MARKER_VAR`] (every descendant inherits it) and, for good measure, in its `run`.
pub fn marker(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "hm-e2e-{label}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A live process, as /proc shows it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: i32,
    pub cmdline: String,
}

/// Live (not zombie) processes whose command line or initial environment contains `marker`.
pub fn processes_with(marker: &str) -> Vec<ProcessInfo> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
        let cmdline = read("cmdline");
        let environ = read("environ");
        let needle = marker.as_bytes();
        if contains(&cmdline, needle) || contains(&environ, needle) {
            let cmdline = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim()
                .to_owned();
            found.push(ProcessInfo { pid, cmdline });
        }
    }
    found
}

/// True for a zombie, or for a process that is gone.
fn is_zombie(pid: i32) -> bool {
    hm_sdk::procfs::stat(pid).is_none_or(|stat| stat.is_dead())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that no process carrying `marker` is alive, allowing `PROCESS_EXIT_GRACE` (3 s) for
/// killed processes to vanish from /proc. Survivors are killed before the panic, so a failing
/// test does not leave them behind either.
pub fn assert_no_process_left(marker: &str) {
    let deadline = Instant::now() + PROCESS_EXIT_GRACE;
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for p in &left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            panic!("processes with marker {marker} are still running after hm exited: {left:#?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (bounded) until at least `at_least` live processes carry `marker`; returns them. Tests
/// use it to prove the marker really finds what a step started before asserting that nothing
/// with it is left.
pub fn wait_for_processes(marker: &str, at_least: usize, within: Duration) -> Vec<ProcessInfo> {
    let deadline = Instant::now() + within;
    loop {
        let found = processes_with(marker);
        if found.len() >= at_least {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} processes with marker {marker} within {within:?}: {found:#?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Asserts that process `pid` is gone (or a zombie), allowing `PROCESS_EXIT_GRACE` (3 s) for a
/// SIGKILL to take effect. Tests use it on the pids `plugin_start` reported.
pub fn assert_process_gone(pid: u32) {
    let deadline = Instant::now() + PROCESS_EXIT_GRACE;
    let pid = pid as i32;
    while !is_zombie(pid) {
        if Instant::now() >= deadline {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            panic!(
                "process {pid} ({}) is still running after hm exited",
                String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---- shell snippets for pipelines ----

/// A shell fragment that waits until `path` exists, giving up (exit 99, with a message on
/// stderr) after about 10 s: steps synchronise on files, never on timing.
pub fn sh_wait_for_file(path: &str) -> String {
    format!(
        "i=0; while [ ! -e {path} ]; do i=$((i+1)); if [ $i -gt 1000 ]; then \
         echo \"gave up waiting for {path}\" >&2; exit 99; fi; sleep 0.01; done"
    )
}

// ---- projects ----

/// A throwaway project directory with an `hm.toml`, removed when dropped.
pub struct Project {
    _temp: tempfile::TempDir,
    root: PathBuf,
    xdg: PathBuf,
}

impl Project {
    /// A project whose `hm.toml` is `hm_toml`.
    pub fn new(hm_toml: &str) -> Self {
        let project = Self::empty();
        project.write("hm.toml", hm_toml);
        project
    }

    /// A project directory with no `hm.toml` yet.
    pub fn empty() -> Self {
        let temp = tempfile::Builder::new()
            .prefix("hm-e2e-")
            .tempdir()
            .expect("create a temp dir");
        // Canonical, so paths steps print (`pwd -P`) compare equal to ours.
        let base = temp
            .path()
            .canonicalize()
            .expect("canonicalize the temp dir");
        let root = base.join("project");
        let xdg = base.join("xdg");
        for dir in [
            &root,
            &xdg.join("data"),
            &xdg.join("state"),
            &xdg.join("runtime"),
        ] {
            std::fs::create_dir_all(dir).expect("create project directories");
        }
        Self {
            _temp: temp,
            root,
            xdg,
        }
    }

    /// The directory holding `hm.toml`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a file relative to the project root, creating its directories.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create parent directories");
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    pub fn read(&self, rel: &str) -> String {
        let path = self.path(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Installs a plugin bundle into `<project>/.hm/plugins/<name>/`; returns the bundle dir.
    pub fn install(&self, bundle: &Bundle) -> PathBuf {
        bundle.write_into(&self.root.join(".hm/plugins"))
    }

    /// The `XDG_DATA_HOME` hm runs with.
    /// `XDG_RUNTIME_DIR` of the hm this project runs: where a run keeps its `$HM_OUTPUT`
    /// files while it lasts.
    pub fn runtime_dir(&self) -> PathBuf {
        self.xdg.join("runtime")
    }

    /// `XDG_CACHE_HOME` of the hm this project runs: where the step cache lives.
    pub fn cache_home(&self) -> PathBuf {
        self.xdg.join("cache")
    }

    pub fn data_home(&self) -> PathBuf {
        self.xdg.join("data")
    }

    /// The `XDG_CONFIG_HOME` hm runs with (where `hm/config.toml` may name a plugin index).
    pub fn config_home(&self) -> PathBuf {
        self.xdg.join("config")
    }

    /// The user layer's plugins directory: `$XDG_DATA_HOME/hm/plugins`.
    pub fn user_plugins(&self) -> PathBuf {
        self.data_home().join("hm/plugins")
    }

    /// `hm ARGS...` in the project root with the hermetic environment, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_in(&self.root, args)
    }

    /// `hm ARGS...` in `dir` (e.g. a subdirectory of the project) with the hermetic environment.
    pub fn command_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(hm_bin());
        cmd.args(args)
            .current_dir(dir)
            .env("XDG_DATA_HOME", self.xdg.join("data"))
            .env("XDG_STATE_HOME", self.xdg.join("state"))
            .env("XDG_CONFIG_HOME", self.xdg.join("config"))
            .env("XDG_RUNTIME_DIR", self.xdg.join("runtime"))
            .env("XDG_CACHE_HOME", self.xdg.join("cache"))
            .env("NO_COLOR", "1")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("CI")
            .env_remove("HM_SINCE")
            .env_remove("HM_LOG")
            .env_remove("HM_PLUGIN_INDEX")
            .env_remove("CARGO_TARGET_DIR");
        cmd
    }

    /// Runs `hm ARGS...` to the end (bounded by [`RUN_DEADLINE`]).
    pub fn hm(&self, args: &[&str]) -> Output {
        Hm::spawn(self.command(args)).finish(RUN_DEADLINE)
    }

    /// Runs `hm run --format json ARGS...` to the end and parses its events.
    pub fn run(&self, args: &[&str]) -> Run {
        self.spawn_run(args).finish(RUN_DEADLINE).into_run()
    }

    /// Like [`Self::run`], with hm started in `dir`.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Run {
        Hm::spawn(self.command_in(dir, &json_run_args(args)))
            .finish(RUN_DEADLINE)
            .into_run()
    }

    /// Starts `hm run --format json ARGS...`, to be watched as it runs.
    pub fn spawn_run(&self, args: &[&str]) -> Hm {
        Hm::spawn(self.command(&json_run_args(args)))
    }
}

fn json_run_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run", "--format", "json"];
    all.extend_from_slice(args);
    all
}

// ---- plugin bundles ----

/// A plugin bundle to install into a project: its `plugin.toml` fields and the executable.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The file name `plugin.toml` names.
    pub executable: String,
    pub protocol: (u32, u32),
    pub capabilities: Vec<String>,
    /// The binary installed as `executable`; `None` installs none.
    pub binary: Option<PathBuf>,
}

impl Bundle {
    /// A bundle named `name` providing executor `executor`, running `binary`.
    pub fn executor(name: &str, executor: &str, binary: impl Into<PathBuf>) -> Self {
        let binary = binary.into();
        let executable = binary
            .file_name()
            .map_or_else(|| name.to_owned(), |n| n.to_string_lossy().into_owned());
        Self {
            name: name.to_owned(),
            version: "0.1.0".to_owned(),
            description: format!("test fixture {name}"),
            executable,
            protocol: (1, 2),
            capabilities: vec![format!("executor:{executor}")],
            binary: Some(binary),
        }
    }

    pub fn protocol(mut self, min: u32, max: u32) -> Self {
        self.protocol = (min, max);
        self
    }

    /// Installs the manifest only: its `executable` will not exist.
    pub fn without_binary(mut self) -> Self {
        self.binary = None;
        self
    }

    /// Writes the bundle as `<parent>/<name>/`: its `plugin.toml` and its executable. Returns
    /// the bundle directory.
    pub fn write_into(&self, parent: &Path) -> PathBuf {
        let dir = parent.join(&self.name);
        std::fs::create_dir_all(&dir).expect("create the bundle directory");
        std::fs::write(dir.join("plugin.toml"), self.manifest()).expect("write plugin.toml");
        if let Some(binary) = &self.binary {
            link_executable(binary, &dir.join(&self.executable));
        }
        dir
    }

    /// The `plugin.toml` text.
    pub fn manifest(&self) -> String {
        let caps: Vec<String> = self.capabilities.iter().map(|c| toml_string(c)).collect();
        format!(
            "name = {}\nversion = {}\ndescription = {}\nexecutable = {}\n\
             protocol = {{ min = {}, max = {} }}\ncapabilities = [{}]\n",
            toml_string(&self.name),
            toml_string(&self.version),
            toml_string(&self.description),
            toml_string(&self.executable),
            self.protocol.0,
            self.protocol.1,
            caps.join(", "),
        )
    }
}

/// Puts the executable `binary` at `dest`. A hard link, not a copy: a copy is written through a
/// file descriptor that a concurrently forked child of this test process could still hold when
/// hm execs the plugin, which fails with ETXTBSY. Copies only across filesystems.
pub fn link_executable(binary: &Path, dest: &Path) {
    if std::fs::hard_link(binary, dest).is_err() {
        std::fs::copy(binary, dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", binary.display(), dest.display()));
    }
}

/// A TOML basic string. The test strings are plain ASCII, for which Rust's `{:?}` quoting is
/// also valid TOML.
fn toml_string(s: &str) -> String {
    format!("{s:?}")
}

// ---- a running hm ----

/// A running `hm`, read as it goes: stdout and stderr are collected line by line on their own
/// threads. Dropping it kills hm if it is still running.
pub struct Hm {
    child: Child,
    started: Instant,
    stdout_rx: Receiver<String>,
    stderr_rx: Receiver<String>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Events parsed so far by [`Self::wait_for_event`].
    events: Vec<Value>,
    status: Option<ExitStatus>,
}

impl Hm {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
        let stdout_rx = read_lines(child.stdout.take().expect("stdout is piped"));
        let stderr_rx = read_lines(child.stderr.take().expect("stderr is piped"));
        Self {
            child,
            started: Instant::now(),
            stdout_rx,
            stderr_rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            events: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Events seen so far.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Reads events until one matches `pred` and returns it; panics (with what hm said) if hm
    /// ends first or `within` passes. `what` describes the event for that message.
    pub fn wait_for_event(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.recv_timeout(left) {
                Ok(line) => {
                    let event = parse_event(&line);
                    self.stdout.push(line);
                    self.events.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain_stderr();
                    panic!("no {what} within {within:?}; {}", self.story());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain_stderr();
                    panic!("hm closed stdout before {what}; {}", self.story());
                }
            }
        }
    }

    /// Reads hm's stderr until a line contains `needle`; panics if hm ends first or `within`
    /// passes.
    pub fn wait_for_stderr(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_rx.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "hm wrote no {needle:?} to stderr within {within:?}; {}",
                        self.story()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "hm closed stderr before writing {needle:?}; {}",
                        self.story()
                    )
                }
            }
        }
    }

    /// Sends `signal` to hm itself (not its process group, like a terminal's Ctrl-C would, so
    /// the test sees what hm does about its children).
    pub fn signal(&mut self, signal: Signal) {
        assert!(
            self.child.try_wait().ok().flatten().is_none(),
            "hm exited before it could be sent {signal:?}; {}",
            self.story()
        );
        // Not reaped (try_wait just said so), so the pid is still hm's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal hm");
    }

    /// Waits up to `within` for hm to exit and collects everything it wrote. On timeout hm is
    /// killed and the test fails.
    pub fn finish(mut self, within: Duration) -> Output {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for hm") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.drain_stderr();
                panic!(
                    "hm did not exit within {within:?}; killed it; {}",
                    self.story()
                );
            }
            std::thread::sleep(POLL);
        };
        self.status = Some(status);
        let elapsed = self.started.elapsed();
        // hm has exited, so its pipes reach end of file as soon as the readers catch up.
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        drain(&self.stdout_rx, &mut self.stdout, drain_deadline);
        drain(&self.stderr_rx, &mut self.stderr, drain_deadline);
        Output {
            status,
            pid: self.child.id(),
            elapsed,
            stdout: join_lines(&self.stdout),
            stderr: join_lines(&self.stderr),
        }
    }

    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr_rx.try_recv() {
            self.stderr.push(line);
        }
    }

    fn story(&self) -> String {
        let kinds: Vec<String> = self.events.iter().map(event_brief).collect();
        format!(
            "events so far: [{}]\nhm stderr:\n{}",
            tail(&kinds, 40).join(", "),
            tail(&self.stderr, 40).join("\n")
        )
    }
}

impl Drop for Hm {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn drain(rx: &Receiver<String>, into: &mut Vec<String>, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => into.push(line),
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "hm exited but its output did not end within 10 s: something holds its pipes"
                )
            }
        }
    }
}

fn join_lines(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    text
}

fn tail<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    items[items.len().saturating_sub(n)..].to_vec()
}

fn parse_event(line: &str) -> Value {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("hm --format json wrote a line that is not JSON ({e}): {line:?}")
    });
    assert!(
        value.is_object(),
        "hm --format json wrote a JSON value that is not an object: {line}"
    );
    value
}

/// `kind` and, when it has one, `step`: for failure messages.
fn event_brief(event: &Value) -> String {
    let kind = event["kind"].as_str().unwrap_or("?");
    match (event["step"].as_str(), event["status"].as_str()) {
        (Some(step), Some(status)) => format!("{kind}({step}: {status})"),
        (Some(step), None) => format!("{kind}({step})"),
        _ => kind.to_owned(),
    }
}

// ---- results ----

/// What a finished `hm` did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// hm's own pid.
    pub pid: u32,
    /// From start to exit.
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// hm's exit code; fails the test if hm was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "hm did not exit normally ({}); stderr:\n{}",
                self.status, self.stderr
            )
        })
    }

    /// Parses stdout as `--format json` events.
    pub fn into_run(self) -> Run {
        let events = self.stdout.lines().map(parse_event).collect();
        Run {
            output: self,
            events,
        }
    }
}

/// A finished `hm run --format json`: its output and its events, with the questions tests ask.
pub struct Run {
    pub output: Output,
    pub events: Vec<Value>,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.code()
    }

    pub fn stderr(&self) -> &str {
        &self.output.stderr
    }

    /// Every event's `kind`, in order.
    pub fn kinds(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or(""))
            .collect()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }

    /// Events of `kind` about `step`.
    pub fn of_step(&self, kind: &str, step: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["kind"] == kind && e["step"] == step)
            .collect()
    }

    /// The position of the first event of `kind` about `step`; fails the test if there is none.
    pub fn index_of(&self, kind: &str, step: &str) -> usize {
        self.events
            .iter()
            .position(|e| e["kind"] == kind && e["step"] == step)
            .unwrap_or_else(|| panic!("no {kind} for step {step}; {self}"))
    }

    /// The position of the last event of `kind` about `step`.
    pub fn last_index_of(&self, kind: &str, step: &str) -> usize {
        self.events
            .iter()
            .rposition(|e| e["kind"] == kind && e["step"] == step)
            .unwrap_or_else(|| panic!("no {kind} for step {step}; {self}"))
    }

    /// The final `step_end` of `step`: the one no `step_retry` follows. Fails the test unless
    /// there is exactly one.
    pub fn step_end(&self, step: &str) -> &Value {
        let finals = self.final_step_ends(step);
        assert_eq!(
            finals.len(),
            1,
            "step {step} must have exactly one final step_end; {self}"
        );
        finals[0]
    }

    fn final_step_ends(&self, step: &str) -> Vec<&Value> {
        let mut finals = Vec::new();
        for (i, event) in self.events.iter().enumerate() {
            if event["kind"] != "step_end" || event["step"] != step {
                continue;
            }
            let retried = self.events[i + 1..]
                .iter()
                .take_while(|e| !(e["kind"] == "step_end" && e["step"] == step))
                .any(|e| e["kind"] == "step_retry" && e["step"] == step);
            if !retried {
                finals.push(event);
            }
        }
        finals
    }

    /// The final status of `step` (`passed`, `failed`, ...).
    pub fn status(&self, step: &str) -> &str {
        self.step_end(step)["status"]
            .as_str()
            .unwrap_or_else(|| panic!("step_end without status; {self}"))
    }

    /// The final cause of `step` (`None` when it passed).
    pub fn cause(&self, step: &str) -> Option<&str> {
        self.step_end(step)["cause"].as_str()
    }

    /// The lines `step` wrote to `stream` (`stdout`/`stderr`), in order.
    pub fn stream_lines(&self, step: &str, stream: &str) -> Vec<&str> {
        self.of_step("step_log", step)
            .into_iter()
            .filter(|e| e["stream"] == stream)
            .map(|e| e["line"].as_str().unwrap_or_default())
            .collect()
    }

    /// Every line `step` wrote, both streams, in the order hm reported them.
    pub fn lines(&self, step: &str) -> Vec<&str> {
        self.of_step("step_log", step)
            .into_iter()
            .map(|e| e["line"].as_str().unwrap_or_default())
            .collect()
    }

    /// Events of `kind` (`plugin_start`, `plugin_exit`, `plugin_restart`) about `plugin`.
    pub fn of_plugin(&self, kind: &str, plugin: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["kind"] == kind && e["plugin"] == plugin)
            .collect()
    }

    /// The pids of every instance of `plugin` that started.
    pub fn plugin_pids(&self, plugin: &str) -> Vec<u32> {
        self.of_plugin("plugin_start", plugin)
            .into_iter()
            .filter_map(|e| e["pid"].as_u64())
            .map(|pid| pid as u32)
            .collect()
    }

    /// Step names in `step_queued` order.
    pub fn queued(&self) -> Vec<&str> {
        self.of_kind("step_queued")
            .into_iter()
            .filter_map(|e| e["step"].as_str())
            .collect()
    }

    /// The one `build_end` event, which must be the last.
    pub fn build_end(&self) -> &Value {
        let ends = self.of_kind("build_end");
        assert_eq!(ends.len(), 1, "exactly one build_end; {self}");
        assert_eq!(
            self.events.last().map(|e| &e["kind"]),
            Some(&Value::from("build_end")),
            "build_end comes last; {self}"
        );
        ends[0]
    }

    /// Asserts that every queued step got exactly one final `step_end`, and nothing else did.
    pub fn assert_one_final_step_end_each(&self) {
        let queued = self.queued();
        for step in &queued {
            let finals = self.final_step_ends(step);
            assert_eq!(
                finals.len(),
                1,
                "step {step} has {} final step_end events; {self}",
                finals.len()
            );
        }
        for end in self.of_kind("step_end") {
            let step = end["step"].as_str().unwrap_or_default();
            assert!(
                queued.contains(&step),
                "step_end for {step}, which was never queued; {self}"
            );
        }
    }

    /// The largest number of steps that were running at the same moment, from the
    /// `step_start`/`step_end` events.
    pub fn max_concurrency(&self) -> usize {
        let mut running = std::collections::BTreeSet::new();
        let mut max = 0;
        for event in &self.events {
            let step = event["step"].as_str().unwrap_or_default();
            if event["kind"] == "step_start" {
                assert!(
                    running.insert(step),
                    "step {step} started twice without ending; {self}"
                );
                max = max.max(running.len());
            } else if event["kind"] == "step_end" {
                running.remove(step);
            }
        }
        max
    }
}

/// For assertion messages: the exit code, the events in brief and the end of hm's stderr.
impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .events
            .iter()
            .filter(|e| e["kind"] != "step_log")
            .map(event_brief)
            .collect();
        let logs = self.events.len() - kinds.len();
        let stderr: Vec<&str> = self.output.stderr.lines().collect();
        write!(
            f,
            "hm exited with {} after {:?}; events (without {logs} step_log): [{}]\nhm stderr:\n{}",
            self.output.status,
            self.output.elapsed,
            tail(&kinds, 60).join(", "),
            tail(&stderr, 40).join("\n")
        )
    }
}

// ---- for the fixture plugins (src/bin/) ----

/// What the fixture plugins share: reading their instructions from a step's environment, and
/// writing output that hm provably has before they misbehave.
pub mod fixture {
    use std::os::fd::RawFd;
    use std::sync::OnceLock;

    use hm_ipc::messages::{KvScope, LogLevel};
    use hm_ipc::transport::IPC_FD_ENV;
    use hm_sdk::{OutputStream, StepContext, StepError, StepRequest};

    static SOCKET_FD: OnceLock<RawFd> = OnceLock::new();

    /// Notes the fd number of the socket to hm. Call it first thing in `main`: `serve` takes
    /// the socket over and removes `HM_IPC_FD` from the environment.
    pub fn note_socket_fd() {
        if let Some(fd) = std::env::var(IPC_FD_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            let _ = SOCKET_FD.set(fd);
        }
    }

    /// The socket's fd, as [`note_socket_fd`] found it; the SDK keeps it open while it serves.
    pub fn socket_fd() -> Result<RawFd, StepError> {
        SOCKET_FD
            .get()
            .copied()
            .ok_or_else(|| StepError::Message(format!("{IPC_FD_ENV} was not noted")))
    }

    /// Returns once hm has sent this plugin a frame it will never read: a diagnostic goes out
    /// (hm answers every host call), then the plugin's only runtime thread blocks until the
    /// answer is waiting on the socket. A plugin that dies now dies the common way, while hm
    /// is talking to it; the socket's close then resets the connection rather than ending it
    /// cleanly.
    pub fn await_unread_frame(ctx: &StepContext) -> Result<(), StepError> {
        let fd = socket_fd()?;
        ctx.log(LogLevel::Debug, "fixture: about to misbehave")?;
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on an fd the SDK keeps open; bounded to 10 s.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        if ready == 1 {
            Ok(())
        } else {
            Err(StepError::Message(
                "hm did not answer a diagnostic within 10 s".into(),
            ))
        }
    }

    /// The step variable that says how many lines a fixture writes before it misbehaves.
    pub const LINES_VAR: &str = "FIXTURE_LINES";

    /// The value of the step's environment variable `name`.
    pub fn var<'a>(step: &'a StepRequest, name: &str) -> Option<&'a str> {
        step.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The lines a fixture writes for `step` when [`LINES_VAR`] is `n`; tests compare what hm
    /// reported against this.
    pub fn expected_lines(step: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{step} line {i} of {n}")).collect()
    }

    /// Queues [`LINES_VAR`] lines of stdout without waiting for hm to have them.
    pub async fn queue_lines(step: &StepRequest, ctx: &StepContext) -> Result<(), StepError> {
        let n = var(step, LINES_VAR)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for line in expected_lines(&step.step, n) {
            ctx.line(OutputStream::Stdout, line).await?;
        }
        Ok(())
    }

    /// Writes [`LINES_VAR`] lines and returns once hm has read them: the lines are flushed, then
    /// a host call is made whose reply can only come after hm read every earlier frame.
    pub async fn write_confirmed_lines(
        step: &StepRequest,
        ctx: &StepContext,
    ) -> Result<(), StepError> {
        queue_lines(step, ctx).await?;
        ctx.flush().await?;
        confirm(ctx).await
    }

    /// A host-call round trip: when it returns, hm has read everything sent before it.
    pub async fn confirm(ctx: &StepContext) -> Result<(), StepError> {
        ctx.kv_get(KvScope::Run, "fixture-confirm").await.map(drop)
    }

    /// The plugin `echo` at `version`: executor `echo` writes `echo plugin VERSION`, then runs
    /// the step with its shell like the shell executor. Two builds with different versions
    /// (`hm-fixture-echo`, `hm-fixture-echo-v2`) let the registry tests install, upgrade and
    /// shadow one plugin, and see which build ran a step.
    pub fn echo_plugin(version: &'static str) -> hm_sdk::Plugin {
        hm_sdk::Plugin::new("echo", version)
            .description("says its version, then runs steps with their shell")
            .executor("echo", Echo { version })
    }

    struct Echo {
        version: &'static str,
    }

    impl hm_sdk::Executor for Echo {
        async fn execute(
            &self,
            step: StepRequest,
            ctx: StepContext,
        ) -> Result<hm_sdk::StepResult, StepError> {
            let line = format!("echo plugin {}", self.version);
            ctx.line(OutputStream::Stdout, line).await?;
            ctx.flush().await?;
            let cmd = hm_sdk::process::shell_command(&step);
            hm_sdk::process::run(cmd, &step, &ctx).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_a_marker_in_their_environment_or_command_line() {
        let m = marker("self-test");
        let mut by_env = Command::new("sleep")
            .arg("1000")
            .env(MARKER_VAR, &m)
            .spawn()
            .expect("spawn sleep");
        // `$0` of a shell blocked reading its stdin: the marker is in its command line only.
        let mut by_arg = Command::new("sh")
            .args(["-c", "read line", &m])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let found = wait_for_processes(&m, 2, Duration::from_secs(10));
        let mut pids: Vec<u32> = found.iter().map(|p| p.pid as u32).collect();
        pids.sort_unstable();
        let mut expected = vec![by_env.id(), by_arg.id()];
        expected.sort_unstable();
        assert_eq!(pids, expected, "{found:#?}");
        assert!(processes_with("hm-e2e-no-such-marker").is_empty());
        for child in [&mut by_env, &mut by_arg] {
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
        assert_no_process_left(&m);
    }
}
