//! Flag value parsers shared by the subcommands.

use std::time::Duration;

/// A Go-style duration as Kubernetes flags take them: `15s`, `1m30s`, `500ms`, `2h`, `1.5s`
/// (Go's `time.ParseDuration`, as KubeProxyConfiguration fields take them too).
pub fn duration(s: &str) -> Result<Duration, String> {
    switchyard_proxy::config::parse_go_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["", "15", "s", "1x", "-1s", "1s2"] {
            assert!(duration(bad).is_err(), "{bad} accepted");
        }
    }
}
