//! Fixture plugin `greeter` 1.0.0 with the subcommand `hm greet` (tests/tests/subcommands.rs):
//! prints the arguments it received as JSON, optionally echoes one line of its stdin, and exits
//! with `--code` (or aborts with `--crash`).

use std::io::BufRead;

use hm_sdk::{Plugin, Subcommand, SubcommandArg};

struct Greet;

impl Subcommand for Greet {
    async fn run(&self, args: serde_json::Value) -> i32 {
        println!("args {args}");
        if args["crash"] == true {
            std::process::abort();
        }
        if args["read-stdin"] == true {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            println!("stdin {}", line.trim_end());
        }
        args["code"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

fn main() {
    hm_sdk::serve(
        Plugin::new("greeter", "1.0.0")
            .description("test fixture: the `greet` subcommand")
            .subcommand(
                "greet",
                "Greets whatever --flag names",
                vec![
                    SubcommandArg::value("flag", "what to greet"),
                    SubcommandArg::value("code", "the exit code to return"),
                    SubcommandArg::switch("read-stdin", "echo one line of stdin"),
                    SubcommandArg::switch("crash", "abort instead of answering"),
                ],
                Greet,
            ),
    )
}
