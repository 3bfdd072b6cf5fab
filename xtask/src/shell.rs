//! A busybox shell on a serial line (or on a console reached through it), driven command
//! by command: each command's status and output come back after a marker the shell
//! computes (`FVS7_0=`), never in the echo of the typed line (which holds `FVS7_$((0))=`),
//! and each command has its own timeout. The benches' counterpart of the tests' `Term`,
//! with errors as values.

use std::time::Duration;

use anyhow::{bail, Context};
use regex::Regex;

use crate::qemu::{Matched, Session};

/// How input reaches the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typing {
    /// All at once (Ferrovisor's console backend, a native serial line).
    AtOnce,
    /// A few characters at a time: Xen's dom0 console polls its input and drops what
    /// arrives faster than it reads.
    Slowly,
}

/// A shell on `session`'s serial line.
pub struct Shell {
    pub session: Session,
    pub typing: Typing,
    n: u32,
}

impl Shell {
    pub fn new(session: Session, typing: Typing) -> Self {
        Shell {
            session,
            typing,
            n: 0,
        }
    }

    /// Types `text` as it is (add `\r` to end a line).
    pub fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match self.typing {
            Typing::AtOnce => self.session.send(text),
            Typing::Slowly => {
                let chars: Vec<char> = text.chars().collect();
                for chunk in chars.chunks(4) {
                    self.session.send(&chunk.iter().collect::<String>())?;
                    std::thread::sleep(Duration::from_millis(40));
                }
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` for `pattern` (multi-line mode) after the last match.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> anyhow::Result<Matched> {
        let re = Regex::new(&format!("(?m){pattern}"))?;
        self.session.expect(&re, timeout)
    }

    /// Runs `cmd` (stdout and stderr together) and returns its exit status and output,
    /// newlines turned into spaces.
    pub fn try_run(&mut self, cmd: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
        self.n += 1;
        let tag = format!("FVS{}_", self.n);
        self.send(&format!(
            "R=$({{ {cmd}; }} 2>&1); S=$?; echo \"{tag}$((0))=$S:$(printf %s \"$R\" | tr '\\n\\r' '  ')\"\r"
        ))?;
        let m = self
            .expect(&format!(r"{tag}0=(\d+):(.*)$"), timeout)
            .with_context(|| format!("no answer to `{cmd}`"))?;
        Ok((m.parse(1)?, m.group(2).trim().to_owned()))
    }

    /// Runs `cmd`, which must succeed; returns its output.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> anyhow::Result<String> {
        let (status, out) = self.try_run(cmd, timeout)?;
        if status != 0 {
            bail!("`{cmd}` exited with status {status}: {out}");
        }
        Ok(out)
    }

    /// Starts `cmd` in the background, detached from the terminal's output (a background
    /// job inside [`Shell::run`]'s command substitution would hold it open).
    pub fn spawn(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.run(
            &format!("{{ {cmd}; }} </dev/null >/dev/null 2>&1 & true"),
            Duration::from_secs(30),
        )
        .map(drop)
    }

    /// Polls (`secs` × 5 tries, 0.2 s apart) until the shell condition `cond` holds.
    /// The answer may take several times `secs`: where forks are slow (a domU on Xen
    /// under TCG) each try costs more than its pause.
    pub fn wait_for(&mut self, cond: &str, secs: u64, what: &str) -> anyhow::Result<()> {
        let (status, _) = self.try_run(
            &format!(
                "for i in $(seq {}); do {cond} && exit 0; sleep 0.2; done; exit 1",
                secs * 5
            ),
            Duration::from_secs(secs * 5 + 30),
        )?;
        // (`exit` leaves only the command substitution's subshell.)
        if status != 0 {
            bail!("{what}: `{cond}` did not hold within {secs} s");
        }
        Ok(())
    }
}
