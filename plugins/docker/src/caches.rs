//! Dependency caches: the named volumes hm hands a step (`cache = [{ key, paths }]`), made if
//! missing with hm's labels (for `hm cache prune` and `docker volume ls --filter
//! label=hm.cache`), and mounted at their paths (a relative one below `/workspace`).

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::models::VolumeCreateRequest;
use hm_sdk::{StepError, StepRequest};

use crate::container::WORKSPACE;
use crate::daemon::describe;

/// The label every cache volume carries, with the path it serves as a second one.
pub const LABEL: &str = "hm.cache";
const PATH_LABEL: &str = "hm.cache.path";

/// Makes sure each of the step's cache volumes exists (creating an existing one is a no-op).
pub async fn ensure(docker: &Docker, step: &StepRequest) -> Result<(), StepError> {
    for cache in &step.caches {
        let request = VolumeCreateRequest {
            name: Some(cache.volume.clone()),
            labels: Some(labels(&cache.path)),
            ..Default::default()
        };
        docker.create_volume(request).await.map_err(|e| {
            StepError::Message(format!(
                "cannot create the cache volume {}: {}",
                cache.volume,
                describe(&e)
            ))
        })?;
    }
    Ok(())
}

/// The labels of the cache volume for `path`.
pub fn labels(path: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_owned(), "1".to_owned()),
        (PATH_LABEL.to_owned(), path.to_owned()),
    ])
}

/// `volume:/path` bindings for the container.
pub fn binds(step: &StepRequest) -> Vec<String> {
    step.caches
        .iter()
        .map(|cache| {
            let path = if cache.path.starts_with('/') {
                cache.path.clone()
            } else {
                Path::new(WORKSPACE).join(&cache.path).display().to_string()
            };
            format!("{}:{path}", cache.volume)
        })
        .collect()
}
