//! Checking `plugin.toml` with the readers `hm.toml` is checked with (`toml_check`): every
//! problem at its place, in the same words.

use std::ops::Range;

use super::model::{
    ARG_KEYS, ArgSpec, CAPABILITY_KINDS, DEFAULT_HOOK_TIMEOUT, HOOK_EVENTS, HOOK_KEYS, HookPhase,
    HookSpec, KEYS, MANIFEST_FILE, MAX_HOOK_TIMEOUT, Manifest, PROTOCOL_KEYS, SUBCOMMAND_KEYS,
    SubcommandSpec,
};
use super::read::{NAME_RULE, valid_name};
use crate::config::Limits;
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, Section, no_special_hint};

/// A key the manifest must have, as a string.
fn required_string(c: &mut Checker<'_>, section: &Section<'_>, key: &str) -> Option<Located> {
    let Some(field) = section.get(key) else {
        c.report.error(
            section.span.clone(),
            format!("{} is missing", label(section, key)),
            Some(format!("add `{key} = \"...\"`")),
        );
        return None;
    };
    c.string(&field).map(|text| (text.to_owned(), field.span()))
}

/// An optional string key: empty when left out.
fn optional_string(c: &mut Checker<'_>, section: &Section<'_>, key: &str) -> Option<String> {
    match section.get(key) {
        None => Some(String::new()),
        Some(field) => c.string(&field).map(str::to_owned),
    }
}

/// How messages name `key` of `section`: "`name`" at the top, "`event` in [hook]" below.
fn label(section: &Section<'_>, key: &str) -> String {
    match section.path.is_empty() {
        true => format!("`{key}`"),
        false => format!("`{key}` in [{}]", section.path),
    }
}

/// A string and where it is.
type Located = (String, Option<Range<usize>>);

pub(super) fn manifest(c: &mut Checker<'_>, doc: &toml_edit::Table) -> Option<Manifest> {
    let root = c.section(doc, None, String::new(), KEYS, no_special_hint);
    let name = required_string(c, &root, "name");
    if let Some((name, span)) = &name
        && !valid_name(name)
    {
        c.report.error(
            span.clone(),
            format!("invalid plugin name `{}`", name.escape_default()),
            Some(NAME_RULE.to_owned()),
        );
    }
    let version = required_string(c, &root, "version");
    if let Some((version, span)) = &version
        && version.trim().is_empty()
    {
        c.report
            .error(span.clone(), "`version` must not be empty".to_owned(), None);
    }
    let description = optional_string(c, &root, "description");
    let executable = required_string(c, &root, "executable");
    if let Some((executable, span)) = &executable {
        let bad = executable.is_empty()
            || executable.contains('/')
            || executable.contains('\0')
            || matches!(executable.as_str(), "." | ".." | MANIFEST_FILE)
            || executable.starts_with('.');
        if bad {
            c.report.error(
                span.clone(),
                format!(
                    "`executable` must be a file name inside the bundle, not `{}`",
                    executable.escape_default()
                ),
                Some("write the executable's file name, e.g. `hm-plugin-mine`".to_owned()),
            );
        }
    }
    let protocol = protocol(c, &root);
    let capabilities = capabilities(c, &root);
    let limits = match root.get("limits") {
        None => Some(Limits::default()),
        Some(field) => c.limits(&field, ""),
    };
    let declared = capabilities.as_deref().unwrap_or(&[]);
    let subcommands = match root.get("subcommand") {
        None => Some(Vec::new()),
        Some(field) => subcommands(c, &field, declared),
    };
    let hooks = hooks(c, root.get("hook"), declared);
    Some(Manifest {
        hooks: hooks?,
        name: name?.0,
        version: version?.0,
        description: description?,
        executable: executable?.0,
        protocol: protocol?,
        capabilities: capabilities?,
        limits: limits?,
        subcommands: subcommands?,
    })
}

/// `protocol = { min, max }`: a non-empty range of versions from 1.
fn protocol(c: &mut Checker<'_>, root: &Section<'_>) -> Option<(u32, u32)> {
    let hint = "write `protocol = { min = 1, max = 5 }`";
    let Some(field) = root.get("protocol") else {
        c.report
            .error(None, "`protocol` is missing", Some(hint.to_owned()));
        return None;
    };
    let section = c.open(&field, "protocol".to_owned(), PROTOCOL_KEYS, hint)?;
    let mut bound = |key: &str| -> Option<u32> {
        let Some(f) = section.get(key) else {
            c.report.error(
                field.span(),
                format!("{} is missing", label(&section, key)),
                Some(hint.to_owned()),
            );
            return None;
        };
        c.integer(&f, 1, i64::from(u32::MAX), None)
            .and_then(|n| u32::try_from(n).ok())
    };
    let (min, max) = (bound("min"), bound("max"));
    let (min, max) = (min?, max?);
    if min > max {
        c.report.error(
            field.span(),
            format!("`protocol` is empty: min {min} is above max {max}"),
            None,
        );
        return None;
    }
    Some((min, max))
}

/// `capabilities = ["KIND:NAME", ...]`, each known and listed once.
fn capabilities(c: &mut Checker<'_>, root: &Section<'_>) -> Option<Vec<String>> {
    let hint = "write e.g. `capabilities = [\"executor:mine\"]`";
    let Some(field) = root.get("capabilities") else {
        c.report
            .error(None, "`capabilities` is missing", Some(hint.to_owned()));
        return None;
    };
    let Some(array) = field.item.as_array() else {
        c.wrong_type(&field, "an array of strings", Some(hint.to_owned()));
        return None;
    };
    let mut ok = true;
    let mut capabilities = Vec::new();
    for value in array.iter() {
        let span = value.span();
        let Some(text) = value.as_str() else {
            let found = c.found_value(value);
            c.report.error(
                span,
                format!("a capability must be a string, found {found}"),
                None,
            );
            ok = false;
            continue;
        };
        if let Err((message, hint)) = check_capability(text) {
            c.report.error(span, message, hint);
            ok = false;
            continue;
        }
        if capabilities.iter().any(|c| c == text) {
            c.report
                .error(span, format!("capability `{text}` is listed twice"), None);
            ok = false;
            continue;
        }
        capabilities.push(text.to_owned());
    }
    ok.then_some(capabilities)
}

/// The `[[...]]` tables of `field`, each as a section whose unknown keys are reported.
fn array_of_tables<'t>(
    c: &mut Checker<'_>,
    field: &Field<'t>,
    path: &str,
    allowed: &[&str],
    hint: &str,
) -> Option<Vec<Section<'t>>> {
    let Some(tables) = field.item.as_array_of_tables() else {
        c.wrong_type(field, "an array of tables", Some(hint.to_owned()));
        return None;
    };
    Some(
        tables
            .iter()
            .map(|table| {
                let span = table.span();
                c.section(table, span, path.to_owned(), allowed, no_special_hint)
            })
            .collect(),
    )
}

/// The hook subscriptions: every `hook:EVENT` capability, with its `[[hook]]` table if it has
/// one.
fn hooks(
    c: &mut Checker<'_>,
    field: Option<Field<'_>>,
    capabilities: &[String],
) -> Option<Vec<HookSpec>> {
    let mut specs: Vec<HookSpec> = capabilities
        .iter()
        .filter_map(|c| c.strip_prefix("hook:"))
        .filter_map(|event| HOOK_EVENTS.iter().copied().find(|e| *e == event))
        .map(|event| HookSpec {
            event,
            phase: HookPhase::After,
            timeout: DEFAULT_HOOK_TIMEOUT,
        })
        .collect();
    let Some(field) = field else {
        return Some(specs);
    };
    let hint = "write `[[hook]]` tables with `event`, `phase` and `timeout`";
    let tables = array_of_tables(c, &field, "hook", HOOK_KEYS, hint)?;
    let mut ok = true;
    let mut described: Vec<&str> = Vec::new();
    for table in tables {
        let Some((event, span)) = required_string(c, &table, "event") else {
            ok = false;
            continue;
        };
        let Some(spec) = specs.iter_mut().find(|s| s.event == event) else {
            c.report.error(
                span,
                format!("`[[hook]]` describes `{event}`, which `capabilities` does not declare"),
                Some(format!("add \"hook:{event}\" to `capabilities`")),
            );
            ok = false;
            continue;
        };
        if described.contains(&spec.event) {
            c.report.error(
                span,
                format!("`[[hook]]` for `{event}` appears twice"),
                Some("one event has one phase and one timeout: merge the tables".to_owned()),
            );
            ok = false;
            continue;
        }
        described.push(spec.event);
        if let Some(f) = table.get("phase") {
            match c.string(&f) {
                Some("after") => spec.phase = HookPhase::After,
                Some("before") if spec.event == "step_start" => spec.phase = HookPhase::Before,
                Some("before") => {
                    c.report.error(
                        f.span(),
                        format!(
                            "`phase = \"before\"` is only available for `step_start`, not \
                             `{event}`"
                        ),
                        Some(
                            "other events are observed after they happen: write `phase = \
                             \"after\"` or leave it out"
                                .to_owned(),
                        ),
                    );
                    ok = false;
                }
                Some(other) => {
                    c.report.error(
                        f.span(),
                        format!("unknown phase `{}`", other.escape_default()),
                        Some("write `phase = \"before\"` or `phase = \"after\"`".to_owned()),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(f) = table.get("timeout") {
            match c.duration(&f, "write a duration above 0, e.g. `\"5s\"`") {
                Some(timeout) if timeout <= MAX_HOOK_TIMEOUT => spec.timeout = timeout,
                Some(_) => {
                    c.report.error(
                        f.span(),
                        format!("{} must be at most 10m", f.label),
                        Some("a before-hook holds its step that long at most".to_owned()),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    specs.sort_by_key(|s| HOOK_EVENTS.iter().position(|e| *e == s.event));
    ok.then_some(specs)
}

/// The `[[subcommand]]` tables: each describes a declared verb and its arguments.
fn subcommands(
    c: &mut Checker<'_>,
    field: &Field<'_>,
    capabilities: &[String],
) -> Option<Vec<SubcommandSpec>> {
    let hint = "write `[[subcommand]]` tables with `verb`, `about` and `args`";
    let tables = array_of_tables(c, field, "subcommand", SUBCOMMAND_KEYS, hint)?;
    let mut ok = true;
    let mut specs = Vec::new();
    for table in tables {
        let Some((verb, span)) = required_string(c, &table, "verb") else {
            ok = false;
            continue;
        };
        if !capabilities.contains(&format!("subcommand:{verb}")) {
            c.report.error(
                span,
                format!(
                    "`[[subcommand]]` describes `{verb}`, which `capabilities` does not declare"
                ),
                Some(format!("add \"subcommand:{verb}\" to `capabilities`")),
            );
            ok = false;
        }
        let about = optional_string(c, &table, "about").unwrap_or_default();
        let mut args = Vec::new();
        if let Some(f) = table.get("args") {
            match arguments(c, &f) {
                Some(found) => args = found,
                None => ok = false,
            }
        }
        specs.push(SubcommandSpec { verb, about, args });
    }
    ok.then_some(specs)
}

/// `args = [{ name, long, takes_value, help }, ...]` of a subcommand.
fn arguments(c: &mut Checker<'_>, field: &Field<'_>) -> Option<Vec<ArgSpec>> {
    let shape = "write `{ name = \"flag\", long = \"flag\", takes_value = true, help = \"...\" }`";
    let Some(array) = field.item.as_array() else {
        c.wrong_type(field, "an array of inline tables", Some(shape.to_owned()));
        return None;
    };
    let mut ok = true;
    let mut args = Vec::new();
    for value in array.iter() {
        let Some(arg) = value.as_inline_table() else {
            let found = c.found_value(value);
            c.report.error(
                value.span(),
                format!("an argument must be an inline table, found {found}"),
                Some(shape.to_owned()),
            );
            ok = false;
            continue;
        };
        let arg = c.section(
            arg,
            value.span(),
            "subcommand.args".to_owned(),
            ARG_KEYS,
            no_special_hint,
        );
        let Some((name, name_span)) = required_string(c, &arg, "name") else {
            ok = false;
            continue;
        };
        let long = match arg.get("long") {
            None => Some(name.clone()),
            Some(f) => c.string(&f).map(str::to_owned),
        };
        let takes_value = match arg.get("takes_value") {
            None => Some(false),
            Some(f) => c.boolean(&f),
        };
        let help = optional_string(c, &arg, "help");
        let (Some(long), Some(takes_value), Some(help)) = (long, takes_value, help) else {
            ok = false;
            continue;
        };
        if !valid_name(&long) || !valid_name(&name) {
            c.report.error(
                name_span,
                format!("invalid argument name `{}`", name.escape_default()),
                Some(NAME_RULE.to_owned()),
            );
            ok = false;
            continue;
        }
        args.push(ArgSpec {
            name,
            long,
            takes_value,
            help,
        });
    }
    ok.then_some(args)
}

/// Checks one capability string: `KIND:VALUE` with a known kind; executor names and verbs
/// follow [`valid_name`].
pub fn check_capability(text: &str) -> Result<(), (String, Option<String>)> {
    let Some((kind, value)) = text.split_once(':') else {
        return Err((
            format!("capability `{}` is not `KIND:NAME`", text.escape_default()),
            Some("write e.g. `executor:mine`, `hook:step_start` or `subcommand:graph`".to_owned()),
        ));
    };
    if !CAPABILITY_KINDS.contains(&kind) {
        let hint = did_you_mean(kind, CAPABILITY_KINDS.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| "kinds: `executor`, `service`, `hook`, `subcommand`".to_owned());
        return Err((
            format!("unknown capability kind `{}`", kind.escape_default()),
            Some(hint),
        ));
    }
    if kind == "hook" && !HOOK_EVENTS.contains(&value) {
        let hint = did_you_mean(value, HOOK_EVENTS.iter().copied())
            .map(|s| format!("did you mean `hook:{s}`?"))
            .unwrap_or_else(|| format!("events: {}", HOOK_EVENTS.join(", ")));
        return Err((
            format!(
                "unknown event `{}` in capability `{}`",
                value.escape_default(),
                text.escape_default()
            ),
            Some(hint),
        ));
    }
    let named = matches!(kind, "executor" | "service" | "subcommand");
    if value.is_empty() || (named && !valid_name(value)) {
        return Err((
            format!(
                "invalid {kind} name `{}` in capability `{}`",
                value.escape_default(),
                text.escape_default()
            ),
            Some(NAME_RULE.to_owned()),
        ));
    }
    Ok(())
}
