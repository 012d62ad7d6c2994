//! A running container's peak memory and CPU time, from the Engine's stats stream: the numbers
//! hm's cgroup leaf cannot give for a docker step, whose processes live in the container's own
//! cgroup.
//!
//! The daemon samples about once a second. On cgroup v1 each sample carries the kernel's own
//! high-water mark (`max_usage`), so the peak is exact; on v2 there is none, and the peak is the
//! highest `usage` sampled. CPU time is cumulative, so the last sample holds it, up to that
//! sample. A step that ends before the first sample has neither.

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// What a container used, as far as its samples tell; `None` when no sample said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
}

impl Usage {
    /// Folds one sample in: the highest memory wins, the latest CPU time replaces the last.
    /// A stopped container's samples are all zeros (or absent); they change nothing, so the
    /// last sample of the running container keeps its numbers.
    fn add(&mut self, sample: &ContainerStatsResponse) {
        let nonzero = |n: &u64| *n > 0;
        let memory = sample.memory_stats.as_ref().and_then(|m| {
            m.max_usage
                .filter(nonzero)
                .or_else(|| m.usage.filter(nonzero))
        });
        if let Some(bytes) = memory {
            self.peak_memory_bytes = Some(self.peak_memory_bytes.map_or(bytes, |p| p.max(bytes)));
        }
        let cpu_ns = sample
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .filter(nonzero);
        if let Some(ns) = cpu_ns {
            self.cpu_ms = Some(ns / 1_000_000);
        }
    }
}

/// Follows one container's stats stream and keeps its [`Usage`]. Started once the container
/// has started; dropping it closes the stream.
pub struct Sampler {
    samples: BoxStream<'static, Result<ContainerStatsResponse, bollard::errors::Error>>,
    usage: Usage,
}

impl Sampler {
    /// Subscribes to container `id`'s stats; the request goes out when first polled.
    pub fn start(docker: &Docker, id: &str) -> Self {
        let options = StatsOptions {
            stream: true,
            one_shot: false,
        };
        Self {
            samples: docker.stats(id, Some(options)).boxed(),
            usage: Usage::default(),
        }
    }

    /// Waits for the next sample and folds it in. Cancel-safe: a sample is folded in the poll
    /// that receives it, so this can be one arm of a `select!`. Once the stream has ended or
    /// failed it never completes: usage is best effort, and a daemon that cannot give stats
    /// leaves it unknown rather than failing the step.
    pub async fn sample(&mut self) {
        match self.samples.next().await {
            Some(Ok(sample)) => self.usage.add(&sample),
            Some(Err(_)) | None => {
                self.samples = futures_util::stream::pending().boxed();
            }
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    /// A sample with cgroup v1's `max_usage` (or none, as on v2), `usage` and the cumulative
    /// CPU time in nanoseconds; `None` leaves the field out, as the daemon does.
    fn sample(
        max_usage: Option<u64>,
        usage: Option<u64>,
        cpu_ns: Option<u64>,
    ) -> ContainerStatsResponse {
        ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats {
                max_usage,
                usage,
                ..Default::default()
            }),
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: cpu_ns,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(samples: &[ContainerStatsResponse], peak: Option<u64>, cpu_ms: Option<u64>) {
        let mut usage = Usage::default();
        for s in samples {
            usage.add(s);
        }
        assert_eq!(
            usage,
            Usage {
                peak_memory_bytes: peak,
                cpu_ms
            },
            "{samples:?}"
        );
    }

    #[test]
    fn no_sample_is_no_usage() {
        check(&[], None, None);
    }

    #[test]
    fn the_kernels_high_water_mark_wins_over_usage_on_cgroup_v1() {
        check(
            &[sample(Some(50 << 20), Some(10 << 20), Some(2_000_000))],
            Some(50 << 20),
            Some(2),
        );
    }

    #[test]
    fn without_a_high_water_mark_the_highest_usage_is_the_peak() {
        check(
            &[
                sample(None, Some(10 << 20), Some(1_000_000)),
                sample(None, Some(70 << 20), Some(5_000_000)),
                sample(Some(0), Some(30 << 20), Some(9_000_000)),
            ],
            Some(70 << 20),
            Some(9),
        );
    }

    #[test]
    fn the_highest_sample_wins_whatever_the_order() {
        check(
            &[
                sample(Some(80 << 20), Some(80 << 20), Some(1_000_000)),
                sample(Some(60 << 20), Some(20 << 20), Some(3_500_000_000)),
            ],
            Some(80 << 20),
            Some(3500),
        );
    }

    #[test]
    fn a_stopped_containers_zeros_keep_the_last_running_numbers() {
        let stopped = [
            sample(Some(0), Some(0), Some(0)),
            sample(None, None, None),
            ContainerStatsResponse::default(),
        ];
        let mut samples = vec![sample(Some(40 << 20), Some(30 << 20), Some(1_200_000_000))];
        samples.extend(stopped.iter().cloned());
        check(&samples, Some(40 << 20), Some(1200));
        check(&stopped, None, None);
    }

    #[test]
    fn cpu_time_under_a_millisecond_is_zero_not_unknown() {
        check(
            &[sample(None, Some(4096), Some(999_999))],
            Some(4096),
            Some(0),
        );
    }
}
