//! Secrets from files (`--token-secret-file`, `--node-secret-file`, `--jwt-secret-file`, `--redis-password-file`,
//! `--consul-token-file`, `--push-secret-file`), so they stay out of process lists and shell history, and URLs with
//! their passwords masked for logs.
use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

impl Config {
    /// Reads every `--*-file` secret into its value. A secret given both ways, or a file that
    /// cannot be read or is empty, is an error. Running it twice changes nothing.
    pub fn read_secret_files(mut self) -> Result<Config, ConfigError> {
        read(&mut self.token_secret, self.token_secret_file.take(), "--token-secret")?;
        read(&mut self.node_secret, self.node_secret_file.take(), "--node-secret")?;
        read(&mut self.jwt_secret, self.jwt_secret_file.take(), "--jwt-secret")?;
        read(&mut self.consul_token, self.consul_token_file.take(), "--consul-token")?;
        if self.consul.is_some() && self.consul_token.is_none() {
            // Consul's own variable, as its CLI reads it.
            self.consul_token = std::env::var("CONSUL_HTTP_TOKEN").ok().filter(|t| !t.is_empty());
        }
        read(&mut self.redis_password, self.redis_password_file.take(), "--redis-password")?;
        let push = &mut self.push;
        read(&mut push.push_secret, push.push_secret_file.take(), "--push-secret")?;
        Ok(self)
    }
}

fn read(value: &mut Option<String>, file: Option<PathBuf>, flag: &str) -> Result<(), ConfigError> {
    let Some(file) = file else { return Ok(()) };
    if value.is_some() {
        return Err(ConfigError(format!("give {flag} or {flag}-file, not both")));
    }
    *value = Some(secret_in(&file, flag)?);
    Ok(())
}

/// The file's content without its trailing newline.
fn secret_in(file: &Path, flag: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError(format!("{flag}-file {}: {e}", file.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError(format!("{flag}-file {} is empty", file.display())));
    }
    Ok(secret.to_string())
}

/// `url` with the password of its user part masked (`redis://app:***@host:6379`), for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_nothing_else() {
        assert_eq!(
            redact_url("redis://app:s3cret@10.0.0.9:6379/0"),
            "redis://app:***@10.0.0.9:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("rediss://token@h:1"), "rediss://***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://h:1/x@y"), "redis://h:1/x@y");
    }

    #[test]
    fn secrets_come_from_files_once() {
        let dir = std::env::temp_dir().join(format!("tim-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "0123456789abcdef\n").unwrap();
        let c = Config { token_secret_file: Some(file.clone()), ..Config::default() };
        let c = c.read_secret_files().unwrap();
        assert_eq!(c.token_secret.as_deref(), Some("0123456789abcdef"));
        assert!(c.token_secret_file.is_none());
        let c = c.read_secret_files().unwrap();
        assert_eq!(c.token_secret.as_deref(), Some("0123456789abcdef"));

        let both = Config { token_secret_file: Some(file), ..c };
        let e = both.read_secret_files().unwrap_err().0;
        assert!(e.contains("not both"), "{e}");
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let empty = Config { jwt_secret_file: Some(dir.join("empty")), ..Config::default() };
        assert!(empty.read_secret_files().unwrap_err().0.contains("is empty"));
        let missing = Config { jwt_secret_file: Some(dir.join("nope")), ..Config::default() };
        assert!(missing.read_secret_files().unwrap_err().0.contains("--jwt-secret-file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
