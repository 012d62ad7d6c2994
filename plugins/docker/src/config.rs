//! What users write for the docker executor: `[plugins.docker].config` (checked at `Init`, so a
//! mistake fails the run at its start) and a step's `with = { ... }` (checked when the step
//! runs). Unknown keys are errors, as everywhere in `hm.toml`. Public for the swarm plugin,
//! whose `[plugins.swarm].config` is this one under its own name ([`PluginConfig::parse_for`]).

use serde_json::Value;

/// `[plugins.docker].config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// The daemon's address (`unix:///path`, `tcp://host:port`); wins over `DOCKER_HOST`.
    pub host: Option<String>,
}

impl PluginConfig {
    /// `[plugins.docker].config`.
    pub fn parse(config: &Value) -> Result<Self, String> {
        Self::parse_for(crate::NAME, "", config, &[])
    }

    /// [`PluginConfig::parse`] for plugin `plugin`, its messages naming
    /// `[plugins.<plugin>].config`. `example_note` follows the example address in the message
    /// for a `host` that is not a string: `""`, or what the address must be, as the swarm
    /// plugin's `" (a swarm manager's socket)"`. Keys in `others` are the caller's to read:
    /// they are skipped here, and named among the known keys.
    pub fn parse_for(
        plugin: &str,
        example_note: &str,
        config: &Value,
        others: &[&str],
    ) -> Result<Self, String> {
        let map = match config {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "[plugins.{plugin}].config must be a table, not {other}"
                ));
            }
        };
        let mut parsed = Self::default();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("host", Value::String(host)) => {
                    crate::daemon::check_scheme(host)
                        .map_err(|e| format!("[plugins.{plugin}].config.host: {e}"))?;
                    parsed.host = Some(host.clone());
                }
                ("host", other) => {
                    return Err(format!(
                        "[plugins.{plugin}].config.host must be a string such as \
                         \"unix:///var/run/docker.sock\"{example_note}, not {other}"
                    ));
                }
                (other, _) if others.contains(&other) => {}
                (other, _) => {
                    let known: Vec<&str> = ["host"].iter().chain(others).copied().collect();
                    return Err(format!(
                        "unknown key `{other}` in [plugins.{plugin}].config (known keys: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// When to pull a step's image (`with.pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only if the image is not present locally (the default).
    #[default]
    Missing,
    /// Pull before every step, so a moving tag is always current.
    Always,
    /// Never pull: a missing image fails the step.
    Never,
}

/// A docker step's `with = { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOptions {
    pub pull: PullPolicy,
}

impl StepOptions {
    pub fn parse(with: &Value) -> Result<Self, String> {
        let map = match with {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => return Err(format!("`with` must be a table, not {other}")),
        };
        let mut parsed = Self::default();
        for (key, value) in map {
            match key.as_str() {
                "pull" => {
                    parsed.pull = match value.as_str() {
                        Some("missing") => PullPolicy::Missing,
                        Some("always") => PullPolicy::Always,
                        Some("never") => PullPolicy::Never,
                        _ => {
                            return Err(format!(
                                "with.pull must be \"missing\", \"always\" or \"never\", not {value}"
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key `{other}` in `with` for the docker executor (known keys: pull)"
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_config() {
        let ok = |v: Value| PluginConfig::parse(&v);
        assert_eq!(ok(json!({})), Ok(PluginConfig::default()));
        assert_eq!(ok(Value::Null), Ok(PluginConfig::default()));
        assert_eq!(
            ok(json!({"host": "unix:///run/docker.sock"})),
            Ok(PluginConfig {
                host: Some("unix:///run/docker.sock".into())
            })
        );
        let err = |v: Value| PluginConfig::parse(&v).unwrap_err();
        assert!(err(json!({"hots": "x"})).contains("unknown key `hots`"));
        assert!(err(json!({"host": 1})).contains("must be a string"));
        assert!(err(json!({"host": "ssh://me@box"})).contains("ssh://"));
        assert!(err(json!([])).contains("must be a table"));
    }

    #[test]
    fn step_options() {
        let pull = |v: Value| StepOptions::parse(&v).map(|o| o.pull);
        assert_eq!(pull(json!({})), Ok(PullPolicy::Missing));
        assert_eq!(pull(json!({"pull": "always"})), Ok(PullPolicy::Always));
        assert_eq!(pull(json!({"pull": "never"})), Ok(PullPolicy::Never));
        assert_eq!(pull(json!({"pull": "missing"})), Ok(PullPolicy::Missing));
        assert!(
            pull(json!({"pull": "sometimes"}))
                .unwrap_err()
                .contains("with.pull")
        );
        assert!(
            pull(json!({"pul": "never"}))
                .unwrap_err()
                .contains("unknown key `pul`")
        );
    }
}
