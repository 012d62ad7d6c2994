//! `hm run` and `hm validate` on the command line: the plan's warnings and problems as text,
//! `--dry-run`'s plan, and the renderer the run's events go to.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use hm_kernel::config::{Pipeline, When};
use hm_kernel::exit;
use hm_kernel::launch::{self, RunSettings};
use hm_kernel::plan::{self, Plan, Selection};
use hm_kernel::registry::{Builtin, PluginSpec};
use hm_kernel::render::{self, Format, RenderOptions};

use super::{FormatArg, RunArgs, error_text, print_out};

/// Plans the run, prints what the plan found worth saying, and hands back the plan or the
/// exit code of what stops it.
fn planned(
    file: Option<&std::path::Path>,
    selection: Selection<'_>,
    builtins: &[Builtin],
) -> Result<Plan, i32> {
    let mut warnings = Vec::new();
    let planned = plan::plan(file, selection, builtins, &mut warnings);
    for warning in warnings {
        errln!("warning: {warning}");
    }
    planned.map_err(|e| {
        errln!("{}", error_text(&e.to_string()));
        e.exit_code()
    })
}

pub fn run(args: RunArgs, builtins: &[Builtin], color: bool) -> i32 {
    let plan = match planned(
        args.file.as_deref(),
        Selection::Named(&args.steps),
        builtins,
    ) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let changes = match plan.changes(args.since.as_deref()) {
        Ok(changes) => changes,
        Err(e) => {
            errln!("{}", error_text(&e.to_string()));
            return e.exit_code();
        }
    };
    let secrets = match plan.secrets(args.secret_file.as_deref()) {
        Ok(secrets) => secrets,
        Err(e) => {
            errln!("{}", error_text(&e.to_string()));
            return e.exit_code();
        }
    };
    if args.dry_run {
        print_out(&plan_text(&plan, plan.parallelism(args.jobs)));
        return exit::OK;
    }
    if let Err(e) = plan.check_attach(&args.attach) {
        errln!("{}", error_text(&e.to_string()));
        return e.exit_code();
    }
    let format = match args.format {
        Some(FormatArg::Human) => Format::Human,
        Some(FormatArg::Json) => Format::Json,
        Some(FormatArg::Github) => Format::Github,
        None if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") => Format::Github,
        None => Format::Human,
    };
    let opts = RenderOptions {
        format,
        color,
        tty: std::io::stderr().is_terminal(),
        logs: args.logs,
    };
    let renderer = render::renderer(
        &opts,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    );
    let settings = RunSettings {
        jobs: args.jobs,
        keep_going: args.keep_going,
        timeout: args.timeout,
        grace: args.grace,
        env: args.env,
        attach: args.attach,
        require_isolation: args.require_isolation,
        changes,
        secrets,
        no_cache: args.no_cache,
        notice: Arc::new(|text: &str| errln!("{text}")),
    };
    match launch::run(plan, settings, renderer) {
        Ok(code) => code,
        Err(e) => {
            errln!("{}", error_text(&e.to_string()));
            e.exit_code()
        }
    }
}

pub fn validate(file: Option<PathBuf>, builtins: &[Builtin]) -> i32 {
    let plan = match planned(file.as_deref(), Selection::All, builtins) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let n = plan.pipeline.steps.len();
    print_out(&format!(
        "{}: ok ({n} step{})\n",
        plan::display(&plan.pipeline.file),
        if n == 1 { "" } else { "s" }
    ));
    exit::OK
}

/// `--dry-run`: the steps by level with their executor and limits, then the hooks.
fn plan_text(plan: &Plan, parallelism: usize) -> String {
    let pipeline = &plan.pipeline;
    let n = plan.selected.len();
    let mut out = format!(
        "pipeline {:?}: {n} step{}, parallelism {parallelism} (dry run: nothing is started)\n",
        pipeline.name,
        if n == 1 { "" } else { "s" }
    );
    for (level, steps) in hm_kernel::dag::levels(pipeline, &plan.selected)
        .iter()
        .enumerate()
    {
        out.push_str(&format!("level {level}:\n"));
        for &i in steps {
            out.push_str(&format!(
                "  {}  ({})\n",
                pipeline.steps[i].name,
                step_details(pipeline, i)
            ));
        }
    }
    let mut services: Vec<&String> = plan.services.keys().collect();
    services.sort();
    for name in services {
        let service = &pipeline.services[name];
        out.push_str(&format!(
            "service {name}  (image {}, on {})\n",
            service.image, plan.services[name].name
        ));
    }
    for hook in &plan.hooks {
        out.push_str(&hook_line(hook));
    }
    out
}

fn step_details(pipeline: &Pipeline, i: usize) -> String {
    let step = &pipeline.steps[i];
    let mut details = vec![format!("executor {}", step.executor)];
    if let Some(image) = &step.image {
        details.push(format!("image {image}"));
    }
    if let Some(m) = step.limits.memory_bytes {
        details.push(format!("memory {}", render::format_bytes(m)));
    }
    if let Some(p) = step.limits.pids {
        details.push(format!("pids {p}"));
    }
    if let Some(c) = step.limits.cpu {
        details.push(format!("cpu {c}"));
    }
    if let Some(t) = step.timeout {
        details.push(format!("timeout {}", humantime::format_duration(t)));
    }
    if !step.needs.is_empty() {
        let needs: Vec<&str> = step
            .needs
            .iter()
            .map(|&n| pipeline.steps[n].name.as_str())
            .collect();
        details.push(format!("needs {}", needs.join(", ")));
    }
    if !step.services.is_empty() {
        details.push(format!("services {}", step.services.join(", ")));
    }
    if step.when != When::OnSuccess {
        details.push(format!("when {}", step.when.as_str()));
    }
    if let Some(condition) = &step.condition {
        let mut parts = Vec::new();
        if let Some(globs) = &condition.changed {
            parts.push(format!("changed {}", globs.join(" ")));
        }
        if let Some(globs) = &condition.exists {
            parts.push(format!("exists {}", globs.join(" ")));
        }
        for (name, values) in &condition.env {
            parts.push(format!("{name}={}", values.join("|")));
        }
        details.push(format!("if {}", parts.join(" and ")));
    }
    details.join(", ")
}

fn hook_line(hook: &PluginSpec) -> String {
    use hm_kernel::registry::manifest::HookPhase;
    let events: Vec<String> = hook
        .hooks
        .iter()
        .map(|h| match h.phase {
            HookPhase::Before => format!("before {}", h.event),
            HookPhase::After => h.event.to_owned(),
        })
        .collect();
    format!("hook {}: {}\n", hook.name, events.join(", "))
}
