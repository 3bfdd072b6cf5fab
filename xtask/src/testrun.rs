//! Running `cargo test` and totalling its results, so that `cargo xtask test` ends with
//! one plain `N passed, M failed` line (what CI reads) instead of the last crate's
//! doc-test summary.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::Context;

/// Totals of one or more `cargo test` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Parses libtest's summary line: `test result: ok. 113 passed; 0 failed; 2 ignored; ...`.
pub fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, rest) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

/// Runs `cmd` (a `cargo test`), passing its output through, and returns the totals of
/// its result lines and whether it succeeded.
pub fn run(cmd: &mut Command) -> anyhow::Result<(Counts, bool)> {
    let line = crate::display_command(cmd);
    eprintln!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut totals = Counts::default();
    for l in BufReader::new(stdout).lines() {
        let l = l.context("reading cargo test's output")?;
        println!("{l}");
        if let Some(c) = parse_result_line(&l) {
            totals.add(c);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    Ok((totals, status.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 113 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.09s"
            ),
            Some(Counts { passed: 113, failed: 0, ignored: 2 })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured"),
            Some(Counts {
                passed: 4,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(parse_result_line("running 6 tests"), None);
        assert_eq!(parse_result_line("test foo ... ok"), None);
    }
}
