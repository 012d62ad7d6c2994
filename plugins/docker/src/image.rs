//! A step's image: used as it is when present locally, pulled according to `with.pull`
//! otherwise, with the pull's progress in the step's log.

use std::collections::HashSet;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use hm_sdk::{OutputStream, StepContext, StepError};

use crate::config::PullPolicy;
use crate::daemon::{describe, is_status};

/// Makes sure `image` is present, pulling it if `policy` says so. The pull shows in the step's
/// log (stderr, prefixed `hm:`): each layer's state changes once per line, without the byte
/// counters that would flood it.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    policy: PullPolicy,
    ctx: &StepContext,
) -> Result<(), StepError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if is_status(&e, 404) => false,
        Err(e) => {
            return Err(StepError::Message(format!(
                "cannot inspect image {image}: {}",
                describe(&e)
            )));
        }
    };
    match (policy, present) {
        (PullPolicy::Never, false) => Err(StepError::Message(format!(
            "image {image} is not present locally and with.pull = \"never\": build or load it \
             first (docker build / docker load), or let hm pull it with with.pull = \"missing\""
        ))),
        (PullPolicy::Never | PullPolicy::Missing, true) => Ok(()),
        (PullPolicy::Always, _) | (PullPolicy::Missing, false) => pull(docker, image, ctx).await,
    }
}

async fn pull(docker: &Docker, image: &str, ctx: &StepContext) -> Result<(), StepError> {
    let reference = with_default_tag(image);
    say(ctx, format!("hm: pulling {reference}")).await?;
    let options = CreateImageOptions {
        from_image: Some(reference.clone()),
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(options), None, None);
    let mut seen = HashSet::new();
    while let Some(event) = progress.next().await {
        let event = event.map_err(|e| {
            StepError::Message(format!("cannot pull image {reference}: {}", describe(&e)))
        })?;
        let Some(status) = event.status else {
            continue;
        };
        let line = match &event.id {
            Some(id) => format!("hm: {id}: {status}"),
            None => format!("hm: {status}"),
        };
        if seen.insert(line.clone()) {
            say(ctx, line).await?;
            ctx.flush().await?;
        }
    }
    Ok(())
}

async fn say(ctx: &StepContext, line: String) -> Result<(), StepError> {
    ctx.line(OutputStream::Stderr, line).await
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
    use super::with_default_tag;

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
}
