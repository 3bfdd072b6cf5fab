//! A shell on the serial line, driven command by command.

use std::time::Duration;

use crate::{re, Boot};

/// The shell the serial line reaches: dom0's, or a domU's while `fv console` (or
/// `fv create -c`) is attached. Every command's result comes back after a marker the
/// shell computes (`Q7_0=`), never in the echo of the typed line (which holds
/// `Q7_$((0))=`), and each command has its own timeout.
pub struct Term {
    pub b: Boot,
    n: u32,
}

impl Term {
    /// The shell of a boot that has reached it.
    pub fn new(b: Boot) -> Self {
        Term { b, n: 0 }
    }

    /// Waits up to `secs` for `pattern` after the last match; fails with the serial log.
    pub fn expect_within(&mut self, pattern: &str, secs: u64) -> crate::Matched {
        let r = re(pattern);
        match self.b.session.expect(&r, Duration::from_secs(secs)) {
            Ok(m) => m,
            Err(e) => {
                let first = format!("{e:#}");
                let first = first.lines().next().unwrap_or("").to_owned();
                self.b
                    .fail(&format!("no /{pattern}/ within {secs} s ({first})"))
            }
        }
    }

    /// Runs `cmd` (stdout and stderr together) and returns its exit status and output,
    /// newlines turned into spaces, waiting up to `secs`.
    pub fn try_run(&mut self, cmd: &str, secs: u64) -> (i32, String) {
        self.n += 1;
        let tag = format!("Q{}_", self.n);
        self.b.send(&format!(
            "R=$({{ {cmd}; }} 2>&1); S=$?; echo \"{tag}$((0))=$S:$(printf %s \"$R\" | tr '\\n\\r' '  ')\"\r"
        ));
        let m = self.expect_within(&format!(r"{tag}0=(\d+):(.*)"), secs);
        let status = m.group(1).parse().expect("a status");
        (status, m.group(2).trim().to_owned())
    }

    /// Runs `cmd`, which must succeed; returns its output.
    pub fn run(&mut self, cmd: &str, secs: u64) -> String {
        let (status, out) = self.try_run(cmd, secs);
        if status != 0 {
            self.b
                .fail(&format!("`{cmd}` exited with status {status}: {out}"));
        }
        out
    }

    /// Runs `cmd`, which must fail; returns its output.
    pub fn run_fails(&mut self, cmd: &str, secs: u64) -> String {
        let (status, out) = self.try_run(cmd, secs);
        if status == 0 {
            self.b
                .fail(&format!("`{cmd}` succeeded but must fail: {out}"));
        }
        out
    }

    pub fn check(&mut self, ok: bool, what: &str) {
        self.b.check(ok, what);
    }

    /// Polls (every 0.2 s, at most `secs`) until the shell condition `cond` holds;
    /// fails if it never does.
    pub fn wait_for(&mut self, cond: &str, secs: u64, what: &str) {
        let tries = secs * 5;
        let (status, _) = self.try_run(
            &format!("for i in $(seq {tries}); do {cond} && exit 0; sleep 0.2; done; exit 1"),
            secs + 30,
        );
        // (`exit` leaves only the command substitution's subshell.)
        if status != 0 {
            self.b
                .fail(&format!("{what}: `{cond}` did not hold within {secs} s"));
        }
    }

    /// Leaves `fv console` (Ctrl-]); what is typed next goes to dom0's shell.
    pub fn leave_console(&mut self) {
        self.b.send("\x1d");
        std::thread::sleep(Duration::from_secs(1));
        self.run("true", 30);
    }

    /// Attaches to `domain`'s console (its history comes first) and waits until its
    /// shell answers.
    pub fn console(&mut self, domain: &str) {
        self.b.send(&format!("fv console {domain}\r"));
        std::thread::sleep(Duration::from_secs(2));
        self.b.send("\r");
        self.run("true", 60);
    }
}
