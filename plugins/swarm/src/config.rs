//! What users write for the swarm executor: `[plugins.swarm].config` (checked at `Init`, so a
//! mistake fails the run at its start) and a step's `with = { ... }` (checked when the step
//! runs). Unknown keys are errors, as everywhere in `hm.toml`.

use std::net::{IpAddr, SocketAddr};

use hm_plugin_docker::config as docker;
use serde_json::Value;

/// `[plugins.swarm].config`: the docker plugin's, under the swarm's name, and where the plugin
/// serves the tasks their files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// A manager's address (`unix:///path`, `tcp://host:port`); wins over `DOCKER_HOST`.
    pub host: Option<String>,
    /// The address of this machine that every node reaches, with the port to serve on (0 or
    /// none: any free one). Without it, the plugin finds one ([`crate::executor`]).
    pub serve: Option<SocketAddr>,
}

impl PluginConfig {
    pub fn parse(config: &Value) -> Result<Self, String> {
        let docker::PluginConfig { host } = docker::PluginConfig::parse_for(
            crate::NAME,
            " (a swarm manager's socket)",
            config,
            &["serve"],
        )?;
        let serve = match config.get("serve") {
            None => None,
            Some(Value::String(text)) => Some(serve_address(text)?),
            Some(other) => {
                return Err(format!(
                    "[plugins.swarm].config.serve must be a string such as \"10.0.0.5\" or \
                     \"10.0.0.5:8700\", not {other}"
                ));
            }
        };
        Ok(Self { host, serve })
    }
}

/// `serve`: an IP address of this machine, with or without a port.
fn serve_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!(
            "[plugins.swarm].config.serve: {text:?} is not an IP address with an optional port \
             (such as \"10.0.0.5\" or \"10.0.0.5:8700\"): give the address of this machine \
             that every node of the swarm reaches"
        )
    })
}

/// A swarm step's `with = { ... }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOptions {
    /// Placement constraints, as `docker service create --constraint` takes them
    /// (`node.labels.disk==ssd`, `node.hostname!=ci-3`): every one must hold on the node.
    pub constraints: Vec<String>,
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
                "constraints" => parsed.constraints = constraints(value)?,
                other => {
                    return Err(format!(
                        "unknown key `{other}` in `with` for the swarm executor (known keys: \
                         constraints)"
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// `with.constraints`: strings that compare a node attribute with `==` or `!=`. The manager
/// checks them fully when the service is created; this catches what is plainly not one.
fn constraints(value: &Value) -> Result<Vec<String>, String> {
    let shape = || {
        format!(
            "with.constraints must be an array of strings such as \
             [\"node.labels.disk==ssd\", \"node.hostname!=ci-3\"], not {value}"
        )
    };
    let items = value.as_array().ok_or_else(shape)?;
    items
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(shape)?;
            if !text.contains("==") && !text.contains("!=") {
                return Err(format!(
                    "with.constraints: {text:?} is not a constraint (expected ATTRIBUTE==VALUE \
                     or ATTRIBUTE!=VALUE, such as \"node.labels.disk==ssd\")"
                ));
            }
            Ok(text.to_owned())
        })
        .collect()
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
            ok(json!({"host": "tcp://manager:2375"})),
            Ok(PluginConfig {
                host: Some("tcp://manager:2375".into()),
                serve: None,
            })
        );
        assert_eq!(
            ok(json!({"serve": "10.0.0.5"})).map(|c| c.serve),
            Ok(Some("10.0.0.5:0".parse().expect("address")))
        );
        assert_eq!(
            ok(json!({"serve": "[fd00::1]:8700"})).map(|c| c.serve),
            Ok(Some("[fd00::1]:8700".parse().expect("address")))
        );
        let err = |v: Value| PluginConfig::parse(&v).unwrap_err();
        let unknown = err(json!({"hots": "x"}));
        assert!(unknown.contains("unknown key `hots` in [plugins.swarm].config"));
        assert!(unknown.contains("known keys: host, serve"), "{unknown}");
        let serve = err(json!({"serve": "ci-host:80"}));
        assert!(serve.contains("is not an IP address"), "{serve}");
        assert!(err(json!({"serve": 8700})).contains("must be a string"));
        assert!(err(json!({"host": 1})).contains("must be a string"));
        assert!(err(json!({"host": "ssh://me@box"})).contains("ssh://"));
        assert!(err(json!([])).contains("must be a table"));
    }

    #[test]
    fn step_options() {
        let parse = |v: Value| StepOptions::parse(&v).map(|o| o.constraints);
        assert_eq!(parse(Value::Null), Ok(vec![]));
        assert_eq!(parse(json!({})), Ok(vec![]));
        assert_eq!(
            parse(json!({"constraints": ["node.labels.x==y", "node.hostname!=a"]})),
            Ok(vec!["node.labels.x==y".into(), "node.hostname!=a".into()])
        );
        let err = |v: Value| StepOptions::parse(&v).unwrap_err();
        let unknown = err(json!({"constraint": ["a==b"]}));
        assert!(unknown.contains("unknown key `constraint`"), "{unknown}");
        assert!(unknown.contains("known keys: constraints"), "{unknown}");
        assert!(err(json!({"constraints": "a==b"})).contains("array of strings"));
        assert!(err(json!({"constraints": [1]})).contains("array of strings"));
        assert!(err(json!({"constraints": ["node.labels.x"]})).contains("is not a constraint"));
        assert!(err(json!("x")).contains("must be a table"));
    }
}
