//! A step's command line as [`process::run`](crate::process::run) starts it: the program, its
//! arguments, its directory and its environment. The builder methods are named after
//! `std::process::Command`'s, so a command written for one reads the same for the other.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// What to start as a step's process. Unlike a `std::process::Command` it carries no stdio or
/// process settings: [`process::run`](crate::process::run) owns those (pipes, process group,
/// parent-death signal, cgroup), so every executor starts its steps the same way.
#[derive(Debug, Clone)]
pub struct StepCommand {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    /// Changes to the environment: a value to set, or `None` to remove the variable.
    env: BTreeMap<OsString, Option<OsString>>,
    /// Whether the plugin's own environment is the base the changes apply to.
    inherit_env: bool,
}

impl StepCommand {
    /// `program` with no arguments, in the plugin's directory and environment. A name without
    /// a `/` is looked up in the `PATH` the step's process will have.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            dir: None,
            env: BTreeMap::new(),
            inherit_env: true,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The directory the process starts in (relative paths are taken from the plugin's).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self.env(key, value);
        }
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts from an empty environment instead of the plugin's; variables set before this
    /// call are dropped too.
    pub fn env_clear(&mut self) -> &mut Self {
        self.env.clear();
        self.inherit_env = false;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    pub fn get_current_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The whole environment the process gets: the plugin's own (unless cleared) with this
    /// command's changes, sorted by name.
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: BTreeMap<OsString, OsString> = if self.inherit_env {
            std::env::vars_os().collect()
        } else {
            BTreeMap::new()
        };
        for (key, value) in &self.env {
            match value {
                Some(value) => env.insert(key.clone(), value.clone()),
                None => env.remove(key),
            };
        }
        env.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::StepCommand;
    use std::ffi::OsString;

    fn lookup(cmd: &StepCommand, key: &str) -> Option<OsString> {
        cmd.environment()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn changes_apply_over_the_plugins_environment_in_order() {
        let mut cmd = StepCommand::new("sh");
        cmd.env("HM_TEST_A", "1")
            .env("HM_TEST_A", "2")
            .env_remove("PATH");
        assert_eq!(lookup(&cmd, "HM_TEST_A"), Some("2".into()));
        assert_eq!(lookup(&cmd, "PATH"), None);
        // The plugin's own variables are kept (cargo sets CARGO_PKG_NAME for a test binary).
        assert_eq!(lookup(&cmd, "CARGO_PKG_NAME"), Some("hm-sdk".into()));
        cmd.env("PATH", "/x");
        assert_eq!(lookup(&cmd, "PATH"), Some("/x".into()));
    }

    #[test]
    fn a_cleared_environment_holds_only_what_is_set_after() {
        let mut cmd = StepCommand::new("sh");
        cmd.env("BEFORE", "1").env_clear().env("AFTER", "2");
        assert_eq!(
            cmd.environment(),
            vec![(OsString::from("AFTER"), OsString::from("2"))]
        );
    }
}
