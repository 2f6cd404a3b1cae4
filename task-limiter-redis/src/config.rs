use std::time::Duration;

/// The checked configuration the renewal task runs on.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) budget: usize,
    pub(crate) ttl: Duration,
    pub(crate) renew_every: Duration,
    /// How often the renewal task looks at the limiter's demand (no Redis call unless it must).
    pub(crate) poll: Duration,
    pub(crate) safety_margin: Duration,
    pub(crate) floor: usize,
    pub(crate) idle_after: Duration,
    pub(crate) process_id: String,
    /// A call that takes longer counts as failed.
    pub(crate) call_timeout: Duration,
}
