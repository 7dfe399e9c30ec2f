//! Autoscaling (Ray's `autoscaling_config`): how many replicas a deployment runs, decided from
//! its load.
//!
//! ```
//! use std::time::Duration;
//! use ferroserve_core::{autoscaling::AutoscalingOptions, Deployment};
//!
//! struct Model;
//! let model = Deployment::new("Model")
//!     .autoscaling(AutoscalingOptions {
//!         min_replicas: 0, // scale to zero when idle
//!         max_replicas: 8,
//!         target_ongoing_requests: 4.0,
//!         ..Default::default()
//!     })
//!     .bind(|| Model);
//! ```
//!
//! The load of a deployment is the number of requests it holds: running on a replica, or
//! queued for one. The controller samples it every 100 ms, in process (no metrics push as in
//! Ray), and averages it over `look_back_period`. The desired number of replicas is
//! `ceil(average load / target_ongoing_requests)`, kept within `[min_replicas, max_replicas]`.
//! The deployment scales up once the desired number has stayed above the current one for
//! `upscale_delay`, and down once it has stayed below for `downscale_delay`. Scaling down
//! removes the idlest replicas first and lets them finish their requests.
//!
//! With `min_replicas: 0` an idle deployment scales to zero; the first request then waits in
//! the queue while a replica starts (at once, without `upscale_delay`), and is served by it.
//!
//! The defaults react in about a second (Ray's wait 30 s to scale up and 10 minutes to scale
//! down), because ferroserve sees its load directly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How often the controller samples an autoscaled deployment's load.
pub(crate) const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// An autoscaled deployment's bounds and targets (Ray's `autoscaling_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingOptions {
    /// The fewest replicas; 0 allows scaling to zero. Default 1.
    pub min_replicas: usize,
    /// The most replicas (at least 1, at least `min_replicas`). Default 1.
    pub max_replicas: usize,
    /// Replicas at start; `None` (the default) starts `min_replicas`.
    pub initial_replicas: Option<usize>,
    /// Requests (running or queued) per replica to aim for; greater than 0. Default 2.
    pub target_ongoing_requests: f64,
    /// The window the load is averaged over. Default 1 s.
    pub look_back_period: Duration,
    /// How long the load must call for more replicas before they start. Default 1 s.
    pub upscale_delay: Duration,
    /// How long the load must call for fewer replicas before some stop. Default 30 s.
    pub downscale_delay: Duration,
}

impl Default for AutoscalingOptions {
    fn default() -> Self {
        AutoscalingOptions {
            min_replicas: 1,
            max_replicas: 1,
            initial_replicas: None,
            target_ongoing_requests: 2.0,
            look_back_period: Duration::from_secs(1),
            upscale_delay: Duration::from_secs(1),
            downscale_delay: Duration::from_secs(30),
        }
    }
}

impl AutoscalingOptions {
    /// The replicas a deployment starts with.
    pub fn initial(&self) -> usize {
        self.initial_replicas.unwrap_or(self.min_replicas)
    }

    /// `n` kept within the bounds.
    pub(crate) fn clamp(&self, n: usize) -> usize {
        n.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }

    /// What is wrong with these options, if anything.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_replicas == 0 {
            out.push("max_replicas must be at least 1, got 0".to_owned());
        }
        if self.min_replicas > self.max_replicas {
            out.push(format!(
                "min_replicas must be at most max_replicas ({}), got {}",
                self.max_replicas, self.min_replicas
            ));
        }
        if let Some(initial) = self.initial_replicas {
            if initial < self.min_replicas || initial > self.max_replicas {
                out.push(format!(
                    "initial_replicas must be between min_replicas ({}) and max_replicas ({}), got {initial}",
                    self.min_replicas, self.max_replicas
                ));
            }
        }
        let t = self.target_ongoing_requests;
        if !(t.is_finite() && t > 0.0) {
            out.push(format!(
                "target_ongoing_requests must be a number greater than 0, got {t}"
            ));
        }
        if self.look_back_period.is_zero() {
            out.push("look_back_period must be greater than 0".to_owned());
        }
        out
    }
}

/// One decision: scale from `from` to `to` replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// The autoscaling policy of one deployment: load samples in, decisions out. Pure logic over
/// the given instants, so it is tested without a server.
#[derive(Debug)]
pub(crate) struct Policy {
    options: AutoscalingOptions,
    samples: VecDeque<(Instant, usize)>,
    /// Since when the desired number has been above (or below) the current one.
    above_since: Option<Instant>,
    below_since: Option<Instant>,
}

impl Policy {
    pub(crate) fn new(options: AutoscalingOptions) -> Self {
        Policy {
            options,
            samples: VecDeque::new(),
            above_since: None,
            below_since: None,
        }
    }

    pub(crate) fn options(&self) -> &AutoscalingOptions {
        &self.options
    }

    /// The replicas the average load calls for, within the bounds.
    fn desired(&self) -> usize {
        let n = self.samples.len().max(1) as f64;
        let load = self.samples.iter().map(|&(_, l)| l as f64).sum::<f64>() / n;
        let want = (load / self.options.target_ongoing_requests).ceil();
        // `as` saturates; the clamp bounds it anyway.
        self.options.clamp(want as usize)
    }

    /// Records the load (`ongoing + queued` requests) seen at `now` and decides whether a
    /// deployment running `current` replicas should scale.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        load: usize,
        current: usize,
    ) -> Option<Decision> {
        self.samples.push_back((now, load));
        let window = self.options.look_back_period;
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > window)
        {
            self.samples.pop_front();
        }
        // Requests are waiting and no replica runs: start one now, whatever the delays.
        if current == 0 && load > 0 {
            self.above_since = None;
            self.below_since = None;
            let to = self.desired().max(1);
            return Some(Decision { from: 0, to });
        }
        let desired = self.desired();
        let decide = |since: &mut Option<Instant>, delay: Duration| {
            let start = *since.get_or_insert(now);
            (now.duration_since(start) >= delay).then(|| {
                *since = None;
                Decision {
                    from: current,
                    to: desired,
                }
            })
        };
        if desired > current {
            self.below_since = None;
            decide(&mut self.above_since, self.options.upscale_delay)
        } else if desired < current {
            self.above_since = None;
            decide(&mut self.below_since, self.options.downscale_delay)
        } else {
            self.above_since = None;
            self.below_since = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> AutoscalingOptions {
        AutoscalingOptions {
            min_replicas: 1,
            max_replicas: 5,
            target_ongoing_requests: 2.0,
            look_back_period: Duration::from_millis(500),
            upscale_delay: Duration::from_secs(1),
            downscale_delay: Duration::from_secs(3),
            ..Default::default()
        }
    }

    /// Feeds `load` every sample period for `for_` and returns the first decision.
    fn feed(
        p: &mut Policy,
        t: &mut Instant,
        load: usize,
        current: usize,
        for_: Duration,
    ) -> Option<(Duration, Decision)> {
        let start = *t;
        while t.duration_since(start) <= for_ {
            if let Some(d) = p.observe(*t, load, current) {
                return Some((t.duration_since(start), d));
            }
            *t += SAMPLE_PERIOD;
        }
        None
    }

    #[test]
    fn scales_up_after_the_upscale_delay_to_load_over_target() {
        let mut p = Policy::new(options());
        let mut t = Instant::now();
        assert_eq!(feed(&mut p, &mut t, 2, 1, Duration::from_secs(5)), None);
        let (after, d) = feed(&mut p, &mut t, 7, 1, Duration::from_secs(5)).unwrap();
        assert_eq!(d, Decision { from: 1, to: 4 }, "ceil(7 / 2) = 4");
        assert_eq!(after, Duration::from_secs(1));
    }

    #[test]
    fn a_short_burst_does_not_scale() {
        let mut p = Policy::new(options());
        let mut t = Instant::now();
        // A burst counts for its length plus the look-back window: 0.2 s + 0.5 s < 1 s.
        assert_eq!(feed(&mut p, &mut t, 9, 1, Duration::from_millis(200)), None);
        assert_eq!(feed(&mut p, &mut t, 1, 1, Duration::from_secs(5)), None);
    }

    #[test]
    fn scales_down_after_the_downscale_delay_and_never_below_min() {
        let mut p = Policy::new(options());
        let mut t = Instant::now();
        let (after, d) = feed(&mut p, &mut t, 0, 4, Duration::from_secs(10)).unwrap();
        assert_eq!(d, Decision { from: 4, to: 1 });
        assert_eq!(after, Duration::from_secs(3));
    }

    #[test]
    fn never_above_max() {
        let mut p = Policy::new(options());
        let mut t = Instant::now();
        let (_, d) = feed(&mut p, &mut t, 1000, 2, Duration::from_secs(5)).unwrap();
        assert_eq!(d.to, 5);
    }

    #[test]
    fn from_zero_a_waiting_request_starts_a_replica_at_once() {
        let mut p = Policy::new(AutoscalingOptions {
            min_replicas: 0,
            ..options()
        });
        let mut t = Instant::now();
        assert_eq!(feed(&mut p, &mut t, 0, 0, Duration::from_secs(5)), None);
        let (after, d) = feed(&mut p, &mut t, 1, 0, Duration::from_secs(5)).unwrap();
        assert_eq!((after, d), (Duration::ZERO, Decision { from: 0, to: 1 }));
    }

    #[test]
    fn options_are_checked() {
        let bad = AutoscalingOptions {
            min_replicas: 3,
            max_replicas: 2,
            initial_replicas: Some(9),
            target_ongoing_requests: 0.0,
            ..Default::default()
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("min_replicas must be at most max_replicas (2)"));
    }
}
