//! Fixture plugin that fails the handshake, speaking the wire by hand (no SDK). Executor
//! `handshake`; what goes wrong is read from `HM_FIXTURE_HANDSHAKE` in its environment (a test
//! sets it on `hm`, whose environment plugins inherit), because no step exists yet:
//!
//! - `exit-before-hello`: says why on stderr and exits with status 3 before any frame;
//! - `hello-then-exit`: sends a valid `Hello` (protocol 1..=2), then exits with status 4
//!   without waiting for `Welcome`;
//! - `protocol-7-9`: sends a `Hello` for protocol 7..=9 only, then waits for hm to answer and
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
        "protocol-7-9" => {
            if let Err(e) = socket.write_all(&hello(7, 9)) {
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
