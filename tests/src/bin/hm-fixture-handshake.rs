//! Fixture plugin that fails the handshake, speaking the wire by hand (no SDK). Executor
//! `handshake`; what goes wrong is read from `HM_FIXTURE_HANDSHAKE` in its environment (a test
//! sets it on `hm`, whose environment plugins inherit), because no step exists yet:
//!
//! - `exit-before-hello`: says why on stderr and exits with status 3 before any frame;
//! - `hello-then-exit`: sends a valid `Hello` (protocol 1..=2), then exits with status 4
//!   without waiting for `Welcome`;
//! - `hello-then-leave-unread`: sends a valid `Hello` (protocol 1..=2), waits until hm's answer
//!   has arrived, and exits with status 4 without reading it: the kernel sees the connection
//!   reset, not a clean end of file (what `hello-then-exit` gives only by chance);
//! - `garbage-first`: sends bytes that are no frame where `Hello` must come, then waits for hm
//!   to close the connection;
//! - `protocol-too-new`: sends a `Hello` for the three versions after the newest hm speaks only, then waits for hm to answer and
//!   close the connection, and prints the `Reject` reason it got to stderr.
//!
//! Its first line on stderr gives its pid, for a test to check that it is gone.

use std::io::{Read, Write};

use hm_ipc::messages::{Hello, Reject};
use hm_ipc::{FrameKind, OutFrame};

const NAME: &str = "fixture-handshake";

fn hello(min: u32, max: u32) -> Vec<u8> {
    let hello = Hello {
        protocol_min: min,
        protocol_max: max,
        name: NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec!["executor:handshake".into()],
    };
    match OutFrame::message(FrameKind::Hello, 0, &hello) {
        Ok(frame) => frame.to_wire(),
        Err(e) => fail(&format!("cannot encode Hello: {e}")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{NAME}: {message}");
    std::process::exit(2)
}

fn main() {
    let mode = std::env::var("HM_FIXTURE_HANDSHAKE").unwrap_or_default();
    // hm shows a failed plugin's last lines of stderr: this one lets a test find the process.
    eprintln!("{NAME}: pid {} in mode {mode}", std::process::id());
    let mut socket = match hm_ipc::transport::inherited() {
        Ok(socket) => socket,
        Err(e) => fail(&e.to_string()),
    };
    if let Err(e) = socket.set_nonblocking(false) {
        fail(&format!("cannot make the socket blocking: {e}"));
    }
    match mode.as_str() {
        "exit-before-hello" => {
            eprintln!("{NAME}: leaving before saying Hello");
            std::process::exit(3)
        }
        "hello-then-exit" => {
            if let Err(e) = socket.write_all(&hello(1, 2)) {
                fail(&format!("cannot send Hello: {e}"));
            }
            eprintln!("{NAME}: said Hello, leaving");
            std::process::exit(4)
        }
        "hello-then-leave-unread" => {
            if let Err(e) = socket.write_all(&hello(1, 2)) {
                fail(&format!("cannot send Hello: {e}"));
            }
            wait_until_readable(&socket);
            eprintln!("{NAME}: said Hello, leaving with hm's answer unread");
            std::process::exit(4)
        }
        "garbage-first" => {
            if let Err(e) = socket.write_all(b"this is no frame header, and no Hello either\n") {
                fail(&format!("cannot send garbage: {e}"));
            }
            let _ = socket.read_to_end(&mut Vec::new());
            fail("hm closed the connection")
        }
        "protocol-too-new" => {
            let newest = hm_ipc::PROTOCOL_MAX;
            if let Err(e) = socket.write_all(&hello(newest + 1, newest + 3)) {
                fail(&format!("cannot send Hello: {e}"));
            }
            // hm answers with Reject and may kill us right away; whatever we read before that
            // is reported.
            let mut answer = Vec::new();
            let _ = socket.read_to_end(&mut answer);
            let reason = hm_ipc::codec::decode_all(&answer)
                .ok()
                .and_then(|frames| frames.into_iter().find(|f| f.kind() == FrameKind::Reject))
                .and_then(|f| f.decode::<Reject>().ok())
                .map_or_else(|| "no Reject received".to_owned(), |r| r.reason);
            fail(&format!("rejected: {reason}"))
        }
        other => fail(&format!("unknown HM_FIXTURE_HANDSHAKE mode {other:?}")),
    }
}

/// Blocks until bytes from hm are waiting in `socket`, without reading them.
fn wait_until_readable(socket: &std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: `byte` is valid for one byte of writes; MSG_PEEK leaves it in the socket.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK,
        )
    };
    if got != 1 {
        fail(&format!(
            "hm sent nothing after Hello ({})",
            std::io::Error::last_os_error()
        ));
    }
}
