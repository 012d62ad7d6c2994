//! `/workspace`: the workspace archive (the project as a tar, which hm builds once per run)
//! unpacked into the container's workspace volume, and the step's working directory in it.

use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::UploadToContainerOptions;
use bytes::Bytes;
use hm_sdk::{StepContext, StepError, StepRequest};

use crate::container::WORKSPACE;
use crate::daemon::describe;

/// Fills the container's `/workspace` with the workspace archive, straight from the shared
/// buffer hm hands over into the Engine's archive upload: no temp file, and no copy (the
/// request body borrows the read-only mapping until the upload is done).
pub async fn upload(docker: &Docker, id: &str, ctx: &StepContext) -> Result<(), StepError> {
    let archive = ctx.open_archive().await?;
    let body = bollard::body_full(Bytes::from_owner(archive));
    let options = UploadToContainerOptions {
        path: WORKSPACE.to_owned(),
        ..Default::default()
    };
    docker
        .upload_to_container(id, Some(options), body)
        .await
        .map_err(|e| {
            StepError::Message(format!(
                "cannot upload the workspace into the container: {}",
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

/// The step's environment for the container: the project is at `/workspace` there.
pub fn container_env(step: &StepRequest) -> Vec<String> {
    step.env
        .iter()
        .map(|(name, value)| {
            if name == hm_sdk::PROJECT_DIR_ENV {
                format!("{name}={WORKSPACE}")
            } else {
                format!("{name}={value}")
            }
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
}
