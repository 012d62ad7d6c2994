//! The host API service: answers plugins' calls into the kernel (`docs/protocol.md`). Key-value
//! state is isolated per plugin: run and step scopes live in memory for the run, the plugin scope
//! persists across runs in `$XDG_STATE_HOME/hm/kv/<plugin>.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use hm_ipc::messages::{CallFailure, HostReply, KvKey, KvScope};

/// Longest key and value a plugin may store, so no plugin can grow the kernel without bound.
const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 1024 * 1024;
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct HostState {
    /// (plugin, scope, step call, key) → value, for the run and step scopes.
    memory: Mutex<HashMap<(String, u8, u64, String), String>>,
}

impl HostState {
    pub fn get(&self, plugin: &str, key: &KvKey) -> HostReply {
        if let Err(e) = check_key(key) {
            return e;
        }
        let value = match key.scope {
            KvScope::Plugin => load_plugin_scope(plugin).get(&key.key).cloned(),
            scope => self.lock().get(&mem_key(plugin, scope, key)).cloned(),
        };
        HostReply::Value(Box::new(value))
    }

    pub fn set(&self, plugin: &str, key: &KvKey, value: Option<String>) -> HostReply {
        if let Err(e) = check_key(key) {
            return e;
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE) {
            return error(format!("value longer than {MAX_VALUE} bytes"));
        }
        match key.scope {
            KvScope::Plugin => {
                let mut map = load_plugin_scope(plugin);
                match value {
                    Some(v) => map.insert(key.key.clone(), v),
                    None => map.remove(&key.key),
                };
                if map.len() > MAX_ENTRIES {
                    return error(format!("more than {MAX_ENTRIES} keys"));
                }
                match store_plugin_scope(plugin, &map) {
                    Ok(()) => HostReply::Ok,
                    Err(e) => error(format!("failed to save plugin state: {e}")),
                }
            }
            scope => {
                let mut memory = self.lock();
                let k = mem_key(plugin, scope, key);
                match value {
                    Some(v) => {
                        if memory.len() >= MAX_ENTRIES && !memory.contains_key(&k) {
                            return error(format!("more than {MAX_ENTRIES} keys"));
                        }
                        memory.insert(k, v);
                    }
                    None => {
                        memory.remove(&k);
                    }
                }
                HostReply::Ok
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u8, u64, String), String>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn mem_key(plugin: &str, scope: KvScope, key: &KvKey) -> (String, u8, u64, String) {
    (
        plugin.to_owned(),
        scope as u8,
        key.step_call,
        key.key.clone(),
    )
}

fn check_key(key: &KvKey) -> Result<(), HostReply> {
    if key.key.is_empty() || key.key.len() > MAX_KEY {
        return Err(error(format!("keys must be 1 to {MAX_KEY} bytes long")));
    }
    Ok(())
}

pub fn error(message: String) -> HostReply {
    HostReply::Error(Box::new(CallFailure { message }))
}

fn state_file(plugin: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    // Plugin names are validated identifiers, but never let one name a path.
    let safe: String = plugin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(base.join("hm/kv").join(format!("{safe}.json")))
}

fn load_plugin_scope(plugin: &str) -> BTreeMap<String, String> {
    state_file(plugin)
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes through a temp file and a rename, so a crash never leaves half a state file.
fn store_plugin_scope(plugin: &str, map: &BTreeMap<String, String>) -> std::io::Result<()> {
    let path = state_file(plugin).ok_or_else(|| std::io::Error::other("no home directory"))?;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("bad state path"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), plugin.len()));
    std::fs::write(&tmp, serde_json::to_vec(map)?)?;
    std::fs::rename(&tmp, &path)
}
