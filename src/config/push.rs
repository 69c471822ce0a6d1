//! Offline push: where a node tells the application that a message landed for a user with no
//! live stream (see `crate::push`).
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ConfigError;

/// Messages waiting to be posted, beyond which new notifications are dropped (and counted).
const DEFAULT_QUEUE: usize = 10_000;

#[derive(Debug, Clone, Args)]
pub struct PushConfig {
    /// POST a signed JSON notification here (http:// or https://) when a message lands for a
    /// user with no live stream (off by default). Needs --push-secret.
    #[arg(long, env = "TIM_PUSH_WEBHOOK")]
    pub push_webhook: Option<String>,
    /// HMAC-SHA256 key of the `x-tim-signature` header (at least 16 bytes).
    #[arg(long, env = "TIM_PUSH_SECRET", hide_env_values = true)]
    pub push_secret: Option<String>,
    /// File holding the push secret, instead of --push-secret.
    #[arg(long, env = "TIM_PUSH_SECRET_FILE")]
    pub push_secret_file: Option<PathBuf>,
    /// Notifications queued at most; past it new ones are dropped and logged.
    #[arg(long, env = "TIM_PUSH_QUEUE", default_value_t = DEFAULT_QUEUE)]
    pub push_queue: usize,
    /// Tries per notification (the first and its retries), with backoff between them.
    #[arg(long, env = "TIM_PUSH_ATTEMPTS", default_value_t = 5)]
    pub push_attempts: u32,
    /// The wait before the first retry; doubled for each next one (at most 30 s).
    #[arg(long, env = "TIM_PUSH_BACKOFF", default_value = "200ms", value_parser = super::parse_duration)]
    pub push_backoff: Duration,
}

impl PushConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.push_webhook else { return Ok(()) };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError(format!(
                "--push-webhook {url:?}: give an http:// or https:// URL"
            )));
        }
        match &self.push_secret {
            Some(s) if s.len() >= 16 => {}
            _ => {
                return Err(ConfigError(
                    "--push-webhook needs --push-secret (at least 16 bytes)".into(),
                ));
            }
        }
        if self.push_queue == 0 || self.push_attempts == 0 {
            return Err(ConfigError("--push-queue and --push-attempts are at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn a_webhook_needs_a_url_a_secret_and_room() {
        let mut c = Config::default();
        c.push.push_webhook = Some("http://127.0.0.1:9/hook".into());
        assert!(c.validate().unwrap_err().to_string().contains("--push-secret"));
        c.push.push_secret = Some("short".into());
        assert!(c.validate().is_err(), "a short secret");
        c.push.push_secret = Some("0123456789abcdef".into());
        c.validate().unwrap();
        c.push.push_queue = 0;
        assert!(c.validate().is_err());
        c.push.push_queue = 10;
        c.push.push_webhook = Some("ftp://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
    }
}
