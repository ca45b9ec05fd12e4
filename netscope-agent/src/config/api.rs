//! The agent's HTTP server: where it listens, who may read it, and the label budget of the
//! flow metrics. Shared by `probe` and `run`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::domain::{Cidr, DestGroups};

/// The default listen address: loopback, so that nothing is exposed without a decision.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Raw settings of the HTTP server (API, `/metrics`, live view, page).
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address of the HTTP server (API, /metrics, /ws/live, the page); port 0 picks one.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "NETSCOPE_LISTEN")]
    pub listen: String,
    /// File holding the bearer token that /api, /ws and the page require (needed on a
    /// non-loopback address).
    #[arg(long, value_name = "FILE", env = "NETSCOPE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Serve a non-loopback address without a token (for a network you trust).
    #[arg(long, env = "NETSCOPE_API_INSECURE")]
    pub api_insecure: bool,
    /// Proxy whose `X-Forwarded-For` is believed (CIDR, repeatable); others' is ignored.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "NETSCOPE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Requests per second each client may make (burst: twice as many).
    #[arg(long, default_value_t = 50, env = "NETSCOPE_API_RATE")]
    pub api_rate: u32,
    /// WebSocket clients of /ws/live at once.
    #[arg(long, default_value_t = 64, env = "NETSCOPE_WS_MAX_CLIENTS")]
    pub ws_max_clients: usize,
    /// Call results kept for /api/v1/calls.
    #[arg(long, default_value_t = 10_000, env = "NETSCOPE_RECENT_CALLS")]
    pub recent_calls: usize,
    /// A destination group of the flow metrics: NAME=CIDR[,CIDR…] (repeatable; `;` between
    /// groups in the environment). Other destinations are `internal` or `external`.
    #[arg(
        long = "dest-group",
        value_name = "NAME=CIDRS",
        env = "NETSCOPE_DEST_GROUPS",
        value_delimiter = ';'
    )]
    pub dest_groups: Vec<String>,
    /// Process names with flow series of their own; the rest count as `~other`.
    #[arg(long, default_value_t = 100, env = "NETSCOPE_COMM_BUDGET")]
    pub comm_budget: usize,
    /// Seconds after which an idle flow series is removed.
    #[arg(long, default_value_t = 600, env = "NETSCOPE_SERIES_TTL_SECS")]
    pub series_ttl_secs: u64,
}

/// Validated server settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// `None` only on loopback or with `--api-insecure`.
    pub token: Option<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub rate_per_sec: u32,
    pub ws_max_clients: usize,
    pub recent_calls: usize,
    pub dest_groups: DestGroups,
    pub comm_budget: usize,
    pub series_ttl: Duration,
}

impl ApiSettings {
    /// How the flow metrics label flows.
    pub fn flow_labels(&self) -> crate::metrics::flows::FlowLabels {
        crate::metrics::flows::FlowLabels {
            dest: self.dest_groups.clone(),
            comm_budget: self.comm_budget,
            ttl: self.series_ttl,
        }
    }
}

/// Longest token file read (a token is a line).
const MAX_TOKEN_BYTES: u64 = 4096;

impl ApiArgs {
    /// Validates everything; problems are appended to `errors`.
    pub fn validate_into(&self, errors: &mut Vec<String>) -> Option<ApiSettings> {
        let before = errors.len();
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(format!(
                    "listen `{}` is not an IP:port address",
                    self.listen
                ))
            })
            .ok();
        let token = self.token(errors);
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && token.is_none()
            && self.api_token_file.is_none()
            && !self.api_insecure
        {
            errors.push(format!(
                "listen {addr} is not loopback: give --api-token-file (or --api-insecure to serve without a token)"
            ));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .filter_map(|p| {
                p.parse::<Cidr>()
                    .map_err(|e| errors.push(format!("trusted-proxy {e}")))
                    .ok()
            })
            .collect();
        self.check_sizes(errors);
        let dest_groups = self.dest_groups(errors);
        (errors.len() == before).then(|| ApiSettings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            token,
            trusted_proxies,
            rate_per_sec: self.api_rate,
            ws_max_clients: self.ws_max_clients,
            recent_calls: self.recent_calls,
            dest_groups,
            comm_budget: self.comm_budget,
            series_ttl: Duration::from_secs(self.series_ttl_secs),
        })
    }

    /// Rates, caps and budgets within sane bounds.
    fn check_sizes(&self, errors: &mut Vec<String>) {
        if self.api_rate == 0 {
            errors.push("api-rate must be at least 1".to_owned());
        }
        for (name, v, max) in [
            ("ws-max-clients", self.ws_max_clients, 10_000),
            ("recent-calls", self.recent_calls, 1_000_000),
            ("comm-budget", self.comm_budget, 10_000),
        ] {
            if !(1..=max).contains(&v) {
                errors.push(format!("{name} {v} must be 1..={max}"));
            }
        }
        if self.series_ttl_secs == 0 {
            errors.push("series-ttl-secs must be at least 1".to_owned());
        }
    }

    /// The token's first line; an unreadable, oversized or empty file is an error.
    fn token(&self, errors: &mut Vec<String>) -> Option<String> {
        let path = self.api_token_file.as_ref()?;
        let shown = path.display();
        match std::fs::metadata(path) {
            Err(e) => {
                errors.push(format!("api-token-file {shown}: {e}"));
                return None;
            }
            Ok(m) if m.len() > MAX_TOKEN_BYTES => {
                errors.push(format!(
                    "api-token-file {shown}: larger than {MAX_TOKEN_BYTES} bytes"
                ));
                return None;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(path) {
            Err(e) => {
                errors.push(format!("api-token-file {shown}: {e}"));
                None
            }
            Ok(text) => {
                let token = text.lines().next().unwrap_or_default().trim().to_owned();
                if token.len() < 16 {
                    errors.push(format!(
                        "api-token-file {shown}: the token must be at least 16 characters"
                    ));
                    return None;
                }
                Some(token)
            }
        }
    }

    fn dest_groups(&self, errors: &mut Vec<String>) -> DestGroups {
        let mut groups: Vec<(String, Vec<Cidr>)> = Vec::new();
        for spec in self.dest_groups.iter().filter(|s| !s.trim().is_empty()) {
            let Some((name, cidrs)) = spec.split_once('=') else {
                errors.push(format!("dest-group `{spec}` is not NAME=CIDR[,CIDR…]"));
                continue;
            };
            let name = name.trim();
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                })
                && !matches!(name, "internal" | "external");
            if !valid_name {
                errors.push(format!(
                    "dest-group name `{name}` must be 1–32 of a-z 0-9 - _, and not internal or external"
                ));
                continue;
            }
            let mut parsed = Vec::new();
            for c in cidrs.split(',') {
                match c.parse::<Cidr>() {
                    Ok(c) => parsed.push(c),
                    Err(e) => errors.push(format!("dest-group {name}: {e}")),
                }
            }
            match groups.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => existing.extend(parsed),
                None => groups.push((name.to_owned(), parsed)),
            }
        }
        DestGroups::new(groups)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }

    fn validate(args: &[&str]) -> Result<ApiSettings, Vec<String>> {
        let mut argv = vec!["agent"];
        argv.extend_from_slice(args);
        let mut errors = Vec::new();
        Cli::try_parse_from(argv)
            .unwrap()
            .api
            .validate_into(&mut errors)
            .ok_or(errors)
    }

    #[test]
    fn the_default_is_loopback_without_a_token() {
        let s = validate(&[]).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.token.is_none());
        assert_eq!(s.comm_budget, 100);
    }

    #[test]
    fn a_public_address_needs_a_token_or_an_explicit_insecure() {
        let errors = validate(&["--listen", "0.0.0.0:9464"]).unwrap_err();
        assert!(errors[0].contains("--api-token-file"), "{errors:?}");
        assert!(validate(&["--listen", "0.0.0.0:9464", "--api-insecure"]).is_ok());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "0123456789abcdef0123").unwrap();
        let path = file.path().to_str().unwrap();
        let s = validate(&["--listen", "0.0.0.0:9464", "--api-token-file", path]).unwrap();
        assert_eq!(
            s.token.as_deref(),
            Some("0123456789abcdef0123"),
            "trailing newline dropped"
        );
    }

    #[test]
    fn every_server_error_is_listed_at_once() {
        let errors = validate(&[
            "--listen",
            "localhost",
            "--api-token-file",
            "/nonexistent/token",
            "--trusted-proxy",
            "10.0.0.0/99",
            "--api-rate",
            "0",
            "--ws-max-clients",
            "0",
            "--dest-group",
            "internal=10.0.0.0/8",
            "--dest-group",
            "db=nope",
            "--dest-group",
            "junk",
        ])
        .unwrap_err();
        let text = errors.join("\n");
        for needle in [
            "listen `localhost`",
            "/nonexistent/token",
            "trusted-proxy",
            "api-rate",
            "ws-max-clients",
            "name `internal`",
            "dest-group db",
            "dest-group `junk`",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        assert_eq!(errors.len(), 8, "{text}");
    }

    #[test]
    fn groups_named_twice_merge() {
        let s = validate(&[
            "--dest-group",
            "db=10.1.0.0/16",
            "--dest-group",
            "db=10.2.0.0/16",
        ])
        .unwrap();
        assert_eq!(s.dest_groups.group_of("10.2.3.4".parse().unwrap()), "db");
        assert_eq!(s.dest_groups.names().count(), 3);
    }
}
