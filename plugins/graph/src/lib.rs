//! The `graph` plugin: `hm graph [--format dot|mermaid] [--file PATH]` prints the pipeline's
//! step graph, one node per step (its name and executor) and one edge per need.
//!
//! It is built on the public SDK only, as any third-party plugin would be: it reads `hm.toml`
//! itself ([`pipeline`]), draws it ([`render`]) and answers the subcommand ([`command`]).

pub mod command;
pub mod pipeline;
pub mod render;

pub use pipeline::{Graph, Problem, Step, parse};
pub use render::{Format, render_dot, render_mermaid};

use hm_sdk::Plugin;

/// The plugin's name, as `hm plugin list` shows it.
pub const NAME: &str = "graph";

/// The `graph` plugin, ready for [`hm_sdk::serve`].
pub fn plugin() -> Plugin {
    Plugin::new(NAME, env!("CARGO_PKG_VERSION"))
        .description("prints the pipeline's step graph as Mermaid or DOT")
        // Subcommands need protocol 4, and 4 is all this plugin uses. Pinning the range, rather
        // than taking whatever the SDK speaks, keeps the checked-in plugin.toml equal to what
        // the binary says in its Hello (hm compares the two) when the SDK learns a new version.
        .protocol(4, 4)
        .subcommand(
            command::VERB,
            command::ABOUT,
            command::args(),
            command::GraphCommand,
        )
}

#[cfg(test)]
mod tests {
    /// `plugin.toml` is what `hm-plugin-graph --hm-manifest` prints; a bundle directory built
    /// from it installs only if the two agree.
    #[test]
    fn the_bundle_manifest_is_what_the_binary_prints() {
        let manifest = super::plugin().manifest("hm-plugin-graph");
        assert_eq!(
            include_str!("../plugin.toml"),
            manifest,
            "plugins/graph/plugin.toml is out of date; regenerate it with \
             `cargo run -q -p hm-plugin-graph -- --hm-manifest > plugins/graph/plugin.toml`"
        );
    }
}
