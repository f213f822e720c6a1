//! The outside tools the tests check spanlens's output with: promtool and amtool (Debian's
//! `prometheus` and `prometheus-alertmanager` packages) and a Python that has
//! `prometheus_client`. scripts/test.sh installs them and exports SPANLENS_PROMTOOL and
//! SPANLENS_PYTHON; a test that needs a missing tool fails, it never skips.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A tool from the environment variable `env`, else from PATH, /usr/bin or /usr/sbin.
pub fn tool(name: &str, env: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is needed by this test and is not on PATH, in /usr/bin or /usr/sbin: \
                 install Debian's `{package}` package (scripts/test.sh does) or set {env}"
            )
        })
}

pub fn promtool() -> PathBuf {
    tool("promtool", "SPANLENS_PROMTOOL", "prometheus")
}

pub fn amtool() -> PathBuf {
    tool("amtool", "SPANLENS_AMTOOL", "prometheus-alertmanager")
}

/// Runs promtool with `args` in `dir`, failing clearly when it cannot be started.
pub fn run_promtool(dir: &Path, args: &[&str]) -> Output {
    let tool = promtool();
    Command::new(&tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool (`{}`): {e}. Install Debian's `prometheus` package \
                 (scripts/test.sh does) or point SPANLENS_PROMTOOL at a promtool binary.",
                tool.display()
            )
        })
}

/// The Python of SPANLENS_PYTHON (else `python3`), checked to import prometheus_client's
/// OpenMetrics parser.
pub fn python() -> PathBuf {
    let python = std::env::var_os("SPANLENS_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from("python3"));
    let python = PathBuf::from(python);
    let probe = Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import prometheus_client, so the OpenMetrics exposition cannot be checked:\n{}\n\
             Run scripts/test.sh (it installs prometheus_client into target/pyenv and sets \
             SPANLENS_PYTHON), or set SPANLENS_PYTHON to a python that has it.",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run {} ({e}); set SPANLENS_PYTHON to a python with prometheus_client, or run scripts/test.sh",
            python.display()
        ),
    }
}

/// Runs `program args` with `input` on stdin; Err when the program cannot be started.
pub fn run_with_stdin(program: &Path, args: &[&str], input: &[u8]) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A child that exits early closes the pipe: its output then says why, so the write error
    // is not the interesting one.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    Ok(output)
}
