//! `hm <verb>` on the command line: one clap subcommand per plugin verb, from the manifests
//! (so `hm --help` and `hm VERB --help` never start a plugin), its arguments as the JSON the
//! plugin receives, and what an unknown verb gets told.

use serde_json::{Map, Value};

use hm_kernel::registry::SubcommandSpec;
use hm_kernel::verbs::{RESERVED, Verb};

/// `command` with one clap subcommand per verb, built from the manifests.
pub fn augment(mut command: clap::Command, verbs: &[Verb]) -> clap::Command {
    for verb in verbs {
        let about = if verb.spec.about.is_empty() {
            format!("(plugin {})", verb.plugin.manifest.name)
        } else {
            format!("{} (plugin {})", verb.spec.about, verb.plugin.manifest.name)
        };
        let mut sub = clap::Command::new(verb.spec.verb.clone()).about(about);
        for arg in &verb.spec.args {
            let mut a = clap::Arg::new(arg.name.clone())
                .long(arg.long.clone())
                .help(arg.help.clone());
            a = if arg.takes_value {
                a.action(clap::ArgAction::Set).value_name("VALUE")
            } else {
                a.action(clap::ArgAction::SetTrue)
            };
            sub = sub.arg(a);
        }
        command = command.subcommand(sub);
    }
    command
}

/// The parsed arguments as the JSON object the plugin receives: each argument by its name, a
/// string or `null` for one that takes a value, a boolean for a switch.
pub fn args_json(spec: &SubcommandSpec, matches: &clap::ArgMatches) -> String {
    let mut object = Map::new();
    for arg in &spec.args {
        let value = if arg.takes_value {
            matches
                .get_one::<String>(&arg.name)
                .map_or(Value::Null, |v| Value::String(v.clone()))
        } else {
            Value::Bool(matches.get_flag(&arg.name))
        };
        object.insert(arg.name.clone(), value);
    }
    Value::Object(object).to_string()
}

/// The message for an unknown verb: the closest verb or command, and how to get more.
pub fn unknown_verb(verb: &str, verbs: &[Verb]) -> String {
    let known: Vec<&str> = RESERVED
        .iter()
        .copied()
        .chain(verbs.iter().map(|v| v.spec.verb.as_str()))
        .collect();
    let mut text = format!("error: `{verb}` is not an hm command or a plugin subcommand");
    if let Some(close) = hm_kernel::suggest::did_you_mean(verb, known.iter().copied()) {
        text.push_str(&format!("\n  hint: did you mean `hm {close}`?"));
    }
    text.push_str(
        "\n  hint: plugins add subcommands: `hm plugin install SOURCE` installs one, \
         `hm plugin list` shows what is installed; `hm --help` lists every command",
    );
    text
}

/// Runs `verb` with `args_json` and returns hm's exit code: the plugin's, or 5 when the plugin
/// could not run it (with what went wrong on stderr).
pub fn run(verb: &Verb, args_json: String) -> i32 {
    let notice: hm_kernel::launch::Notice = std::sync::Arc::new(|text: &str| errln!("{text}"));
    match hm_kernel::verbs::run(verb, args_json, notice) {
        Ok(code) => code,
        Err(e) => {
            errln!(
                "error: plugin `{}` (`hm {}`): {e}",
                verb.plugin.manifest.name,
                verb.spec.verb
            );
            hm_kernel::exit::PLUGIN
        }
    }
}
