//! The `hm` binary: the command line (`cli`: parsing, and everything hm prints of its own) on
//! top of the kernel library, plus the built-in plugins, which run as separate processes by
//! re-executing this binary as `hm __plugin NAME`.

use std::process::ExitCode;

mod cli;

use hm_kernel::guardian::GUARDIAN_ENTRY;
use hm_kernel::registry::{BUILTIN_ENTRY, Builtin};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref().is_some_and(|a| a == GUARDIAN_ENTRY) {
        return ExitCode::from(hm_kernel::guardian::guardian_main(|path| {
            let _ = hm_kernel::cgroup::remove_run_path(path);
        }) as u8);
    }
    if first.is_some_and(|a| a == BUILTIN_ENTRY) {
        let name = args.next().unwrap_or_default();
        match name.to_str() {
            Some(hm_plugin_shell::NAME) => hm_sdk::serve(hm_plugin_shell::plugin()),
            Some(hm_plugin_docker::NAME) => hm_sdk::serve(hm_plugin_docker::plugin()),
            Some(hm_plugin_swarm::NAME) => hm_sdk::serve(hm_plugin_swarm::plugin()),
            _ => {
                eprintln!("hm: no built-in plugin called {name:?}");
                return ExitCode::from(hm_kernel::exit::PLUGIN as u8);
            }
        }
    }
    let builtins = [
        Builtin {
            name: hm_plugin_shell::NAME,
            version: env!("CARGO_PKG_VERSION"),
            capabilities: hm_plugin_shell::plugin().capabilities(),
        },
        Builtin {
            name: hm_plugin_docker::NAME,
            version: env!("CARGO_PKG_VERSION"),
            capabilities: hm_plugin_docker::plugin().capabilities(),
        },
        Builtin {
            name: hm_plugin_swarm::NAME,
            version: env!("CARGO_PKG_VERSION"),
            capabilities: hm_plugin_swarm::plugin().capabilities(),
        },
    ];
    ExitCode::from(cli::main(&builtins) as u8)
}
