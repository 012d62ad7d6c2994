//! The shell executor as its own executable.

fn main() {
    hm_sdk::serve(hm_plugin_shell::plugin())
}
