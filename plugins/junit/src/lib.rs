//! The `junit` plugin: a hook that writes the run's steps as a JUnit XML report at the end of
//! every run of a project that configures it (`[plugins.junit]` in `hm.toml`), for CI systems
//! that show test reports (Jenkins, GitLab, GitHub Actions reporters).
//!
//! It is built on the public SDK only, as any third-party plugin would be: it reads its
//! settings ([`config`]), folds the events it observes into a [`Report`] ([`report`]), renders
//! that as XML ([`xml`]) and writes it atomically ([`write`](mod@write)) when `build_end` arrives
//! ([`hook`]).

pub mod config;
pub mod hook;
pub mod report;
pub mod write;
pub mod xml;

pub use config::Config;
pub use hook::JunitHook;
pub use report::Report;

use hm_sdk::Plugin;

/// The plugin's name: what `[plugins.<name>]` and `hm plugin list` say.
pub const NAME: &str = "junit";

/// The `junit` plugin, ready for [`hm_sdk::serve`].
pub fn plugin() -> Plugin {
    Plugin::new(NAME, env!("CARGO_PKG_VERSION"))
        .description("writes the run's steps as a JUnit XML report")
        // Hooks arrived in protocol 5 and are all this plugin does, so an older hm has nothing
        // to offer it. Pinning the range, rather than taking whatever the SDK speaks, keeps the
        // checked-in plugin.toml equal to what the binary says in its Hello (hm compares the
        // two) when the SDK learns a new version.
        .protocol(5, 5)
        // A bad configuration is reported when hm starts the hook, with this message, rather
        // than noticed as a missing report after the run; `required = true` makes it fail the
        // run (exit 5).
        .on_init(|info| {
            Config::from_json(&info.config)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .hook(JunitHook::default(), hook::subscriptions())
}

#[cfg(test)]
mod tests {
    /// `plugin.toml` is what `hm-plugin-junit --hm-manifest` prints; a bundle directory built
    /// from it installs only if the two agree.
    #[test]
    fn the_bundle_manifest_is_what_the_binary_prints() {
        let manifest = super::plugin().manifest("hm-plugin-junit");
        assert_eq!(
            include_str!("../plugin.toml"),
            manifest,
            "plugins/junit/plugin.toml is out of date; regenerate it with \
             `cargo run -q -p hm-plugin-junit -- --hm-manifest > plugins/junit/plugin.toml`"
        );
    }
}
