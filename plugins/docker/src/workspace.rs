//! `/workspace`: the workspace archive (the project as a tar, which hm builds once per run)
//! unpacked into the container's workspace volume with the artifacts of the steps this one
//! needs on top, the step's output file, and the step's working directory and environment.

use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::UploadToContainerOptions;
use bytes::Bytes;
use hm_sdk::{StepContext, StepError, StepRequest};

use crate::container::WORKSPACE;
use crate::daemon::describe;
use crate::outputs;

/// Fills the container's `/workspace` with the workspace archive and then the artifacts of
/// the steps this one needs, each straight from the shared buffer hm hands over into the
/// Engine's archive upload: no temp file, and no copy (the request body borrows the read-only
/// mapping until the upload is done). A step with an output file gets its own
/// ([`outputs::OUTPUT_FILE`]).
pub async fn upload(
    docker: &Docker,
    id: &str,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<(), StepError> {
    let archive = ctx.open_archive().await?;
    put(
        docker,
        id,
        WORKSPACE,
        Bytes::from_owner(archive),
        "the workspace",
    )
    .await?;
    if let Some(artifacts) = ctx.open_artifacts().await? {
        let what = "the artifacts of the steps it needs";
        put(docker, id, WORKSPACE, Bytes::from_owner(artifacts), what).await?;
    }
    if step.output_file().is_some() {
        let tar = outputs::output_tar()
            .map_err(|e| StepError::Message(format!("cannot make the step's output file: {e}")))?;
        put(docker, id, "/", Bytes::from(tar), "the step's output file").await?;
    }
    Ok(())
}

/// Unpacks `tar` at `path` in the container.
async fn put(
    docker: &Docker,
    id: &str,
    path: &str,
    tar: Bytes,
    what: &str,
) -> Result<(), StepError> {
    let options = UploadToContainerOptions {
        path: path.to_owned(),
        ..Default::default()
    };
    docker
        .upload_to_container(id, Some(options), bollard::body_full(tar))
        .await
        .map_err(|e| {
            StepError::Message(format!(
                "cannot upload {what} into the container: {}",
                describe(&e)
            ))
        })
}

/// The step's working directory inside the container: its `dir` below the project root,
/// below `/workspace`.
pub fn working_dir(step: &StepRequest) -> String {
    let relative = step
        .project_dir()
        .and_then(|root| step.dir.strip_prefix(root).ok())
        .filter(|rel| !rel.as_os_str().is_empty());
    match relative {
        Some(rel) => Path::new(WORKSPACE).join(rel).display().to_string(),
        None => WORKSPACE.to_owned(),
    }
}

/// The step's environment for the container: the project is at `/workspace` there, and the
/// output file at [`outputs::OUTPUT_FILE`].
pub fn container_env(step: &StepRequest) -> Vec<String> {
    step.env
        .iter()
        .map(|(name, value)| match name.as_str() {
            hm_sdk::PROJECT_DIR_ENV => format!("{name}={WORKSPACE}"),
            hm_sdk::OUTPUT_ENV => format!("{name}={}", outputs::OUTPUT_FILE),
            _ => format!("{name}={value}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(dir: &str, root: Option<&str>) -> StepRequest {
        let mut env = vec![("CI".to_owned(), "true".to_owned())];
        if let Some(root) = root {
            env.push((hm_sdk::PROJECT_DIR_ENV.to_owned(), root.to_owned()));
        }
        StepRequest {
            step: "s".into(),
            attempt: 1,
            run: "true".into(),
            shell: vec!["sh".into(), "-c".into()],
            dir: dir.into(),
            env,
            image: Some("busybox".into()),
            with: serde_json::Value::Null,
            grace: std::time::Duration::from_secs(1),
            cgroup_procs: Vec::new(),
            limits: Default::default(),
            artifacts: Vec::new(),
            artifact_limits: Default::default(),
            caches: Vec::new(),
            services: Vec::new(),
        }
    }

    #[test]
    fn the_working_dir_is_the_steps_dir_below_the_workspace() {
        let cases = [
            ("/p", Some("/p"), "/workspace"),
            ("/p/a/b", Some("/p"), "/workspace/a/b"),
            // An hm that does not say where the project is: the workspace itself.
            ("/p/a", None, "/workspace"),
            ("/elsewhere", Some("/p"), "/workspace"),
        ];
        for (dir, root, expected) in cases {
            assert_eq!(working_dir(&step(dir, root)), expected, "{dir} in {root:?}");
        }
    }

    #[test]
    fn the_project_dir_is_the_workspace_inside() {
        assert_eq!(
            container_env(&step("/p", Some("/p"))),
            ["CI=true", "HM_PROJECT_DIR=/workspace"]
        );
    }

    #[test]
    fn the_output_file_is_the_containers_own() {
        let mut step = step("/p", Some("/p"));
        step.env
            .push((hm_sdk::OUTPUT_ENV.into(), "/tmp/hm-1/outputs/s".into()));
        assert_eq!(
            container_env(&step),
            [
                "CI=true",
                "HM_PROJECT_DIR=/workspace",
                "HM_OUTPUT=/hm/output"
            ]
        );
    }
}
