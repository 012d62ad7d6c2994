//! The image of a step or a service: used as it is when present locally, pulled according to
//! `with.pull` otherwise, at most once per run and image ([`Pulls`]), with the pull's progress
//! in the log of the step that pulls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use hm_sdk::{OutputStream, ServiceError, StepContext, StepError};
use tokio::sync::OnceCell;

use crate::config::PullPolicy;
use crate::daemon::{describe, is_status};

/// Why an image is not there to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// It is not present and may not be pulled, or its pull failed: hm reports cause `image`.
    Unavailable(String),
    /// The daemon could not say whether it is present.
    Daemon(String),
}

impl From<ImageError> for StepError {
    fn from(error: ImageError) -> Self {
        match error {
            ImageError::Unavailable(message) => StepError::Image(message),
            ImageError::Daemon(message) => StepError::Message(message),
        }
    }
}

impl From<ImageError> for ServiceError {
    fn from(error: ImageError) -> Self {
        match error {
            ImageError::Unavailable(message) => ServiceError::Image(message),
            ImageError::Daemon(message) => ServiceError::Failed {
                message,
                log: Vec::new(),
            },
        }
    }
}

/// The pulls of this plugin's run, one cell per image reference. Steps and services that need
/// the same image at once wait for one pull and share its outcome; a pulled image is not
/// pulled again in the run, even with `pull = "always"` (the tag moving under a running
/// pipeline would make its steps disagree). A failed pull is forgotten once its waiters have
/// seen it, so a retry of the step (`retry.on = ["image"]`) pulls again.
#[derive(Default)]
pub struct Pulls {
    cells: Mutex<HashMap<String, Arc<Pull>>>,
}

/// One image's pull in this run: its outcome once there is one.
type Pull = OnceCell<Result<(), String>>;

impl Pulls {
    fn cell(&self, reference: &str) -> Arc<Pull> {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells.entry(reference.to_owned()).or_default().clone()
    }

    fn forget(&self, reference: &str, failed: &Arc<Pull>) {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the cell that failed: a retry may have put a fresh one there already.
        if cells.get(reference).is_some_and(|c| Arc::ptr_eq(c, failed)) {
            cells.remove(reference);
        }
    }

    /// Pulls `reference` unless this run pulled it already; `progress` gets the pull's lines
    /// when this call is the one that pulls. A caller dropped mid-pull (a cancelled step)
    /// hands the pull to the next waiter, which starts it again (the daemon joins the two).
    async fn once(
        &self,
        docker: &Docker,
        reference: &str,
        progress: Option<&StepContext>,
    ) -> Result<(), String> {
        let cell = self.cell(reference);
        let pulled = cell
            .get_or_init(|| pull(docker, reference, progress))
            .await
            .clone();
        if pulled.is_err() {
            self.forget(reference, &cell);
        }
        pulled
    }
}

/// Makes sure `image` is present, pulling it if `policy` says so (through `pulls`). The pull
/// shows in `progress`, a step's log, when there is one (stderr, prefixed `hm:`): each layer's
/// state changes once per line, without the byte counters that would flood it.
pub async fn ensure(
    docker: &Docker,
    pulls: &Pulls,
    image: &str,
    policy: PullPolicy,
    progress: Option<&StepContext>,
) -> Result<(), ImageError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if is_status(&e, 404) => false,
        Err(e) => {
            return Err(ImageError::Daemon(format!(
                "cannot inspect image {image}: {}",
                describe(&e)
            )));
        }
    };
    match (policy, present) {
        (PullPolicy::Never, false) => Err(ImageError::Unavailable(format!(
            "image {image} is not present locally and with.pull = \"never\": build or load it \
             first (docker build / docker load), or let hm pull it with with.pull = \"missing\""
        ))),
        (PullPolicy::Never | PullPolicy::Missing, true) => Ok(()),
        (PullPolicy::Always, _) | (PullPolicy::Missing, false) => pulls
            .once(docker, &with_default_tag(image), progress)
            .await
            .map_err(ImageError::Unavailable),
    }
}

async fn pull(
    docker: &Docker,
    reference: &str,
    progress: Option<&StepContext>,
) -> Result<(), String> {
    say(progress, format!("hm: pulling {reference}")).await;
    let options = CreateImageOptions {
        from_image: Some(reference.to_owned()),
        ..Default::default()
    };
    let mut events = docker.create_image(Some(options), None, None);
    let mut seen = HashSet::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| {
            format!(
                "cannot pull image {reference}: {}\n  hint: check the image's name and tag, \
                 that the Docker daemon can reach its registry (and is logged in to it: docker \
                 login), or build or load the image locally (docker build / docker load) and \
                 set with.pull = \"never\"",
                describe(&e)
            )
        })?;
        let Some(status) = event.status else {
            continue;
        };
        let line = match &event.id {
            Some(id) => format!("hm: {id}: {status}"),
            None => format!("hm: {status}"),
        };
        if progress.is_some() && seen.insert(line.clone()) {
            say(progress, line).await;
        }
    }
    Ok(())
}

/// One line of progress in the step's log, sent at once (a pull is slow, its lines are few).
/// The pull goes on whether or not it can be shown: other steps may be waiting for it.
async fn say(progress: Option<&StepContext>, line: String) {
    if let Some(ctx) = progress {
        if ctx.line(OutputStream::Stderr, line).await.is_ok() {
            let _ = ctx.flush().await;
        }
    }
}

/// `name` → `name:latest`: without a tag or digest the Engine would pull every tag.
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untagged_reference_means_latest() {
        let cases = [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
            ("localhost:5000/team/app:v2", "localhost:5000/team/app:v2"),
            ("app@sha256:abcd", "app@sha256:abcd"),
        ];
        for (input, expected) in cases {
            assert_eq!(with_default_tag(input), expected, "{input}");
        }
    }

    #[test]
    fn a_missing_or_unpullable_image_is_cause_image_and_a_daemon_error_is_not() {
        let unavailable = ImageError::Unavailable("no such image".into());
        assert!(
            matches!(StepError::from(unavailable.clone()), StepError::Image(m) if m == "no such image")
        );
        assert!(matches!(
            ServiceError::from(unavailable),
            ServiceError::Image(_)
        ));
        let daemon = ImageError::Daemon("the daemon did not answer in time".into());
        assert!(matches!(
            StepError::from(daemon.clone()),
            StepError::Message(_)
        ));
        assert!(matches!(
            ServiceError::from(daemon),
            ServiceError::Failed { log, .. } if log.is_empty()
        ));
    }

    #[tokio::test]
    async fn a_failed_pull_is_shared_by_its_waiters_then_forgotten() {
        let pulls = Pulls::default();
        let first = pulls.cell("app:1");
        assert!(
            Arc::ptr_eq(&first, &pulls.cell("app:1")),
            "one cell per image"
        );
        let _ = first.set(Err("no route to the registry".into()));
        let waiter = pulls.cell("app:1");
        assert_eq!(waiter.get(), Some(&Err("no route to the registry".into())));
        pulls.forget("app:1", &first);
        assert!(pulls.cell("app:1").get().is_none(), "a retry pulls again");
        // A waiter late to forget a failure leaves the fresh cell alone.
        let fresh = pulls.cell("app:1");
        pulls.forget("app:1", &waiter);
        assert!(Arc::ptr_eq(&fresh, &pulls.cell("app:1")));
    }
}
