//! spanlens-loadgen: the fixtures builder shared by spanlens's tests, benches and examples
//! ([`fixtures`]), the load generator binary of the same name (`spanlens-loadgen --help`,
//! BENCHMARKS.md) that sends its requests to a running spanlens, and the soak
//! (`spanlens-soak --help`, `scripts/soak.sh`): hours of mixed traffic against a spanlens
//! that forwards to a failing downstream ([`sink`]), judged by [`soak`].

pub mod client;
pub mod fixtures;
pub mod procfs;
pub mod server_latency;
pub mod sink;
pub mod soak;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Runs a command's `run` on a runtime of `threads` workers: exit 0 when its checks held, 1
/// when one failed, 2 (with the error on stderr, after `name`) when it could not run.
pub fn exit_code_of(
    name: &str,
    threads: usize,
    run: impl Future<Output = Result<bool, String>>,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// A duration as the command lines take it: `10s`, `500ms`, `2m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: use e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
