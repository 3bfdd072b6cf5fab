//! Booting an ISO in QEMU: the command line (one definition for `cargo xtask run` and the
//! integration tests), the `isa-debug-exit` verdict, and a [`Session`] that reads the serial
//! log while QEMU runs.
//!
//! Every wait in a [`Session`] has a hard timeout, and every error it returns carries the
//! whole serial log, so a failing test shows what the hypervisor said.

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use regex::Regex;

/// The I/O port of QEMU's `isa-debug-exit` device: writing `v` to it makes QEMU exit with
/// status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How QEMU runs the guest's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's emulator, with `-cpu max`: works everywhere; the default.
    Tcg,
    /// KVM with `-cpu host`: needs hardware VT-x/AMD-V. Never chosen automatically: nested
    /// paravirtual KVM on some cloud machines breaks ring-3 `syscall`, which PV guests need.
    Kvm,
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioDisk {
    pub image: PathBuf,
    pub read_only: bool,
}

/// A virtio-net NIC on QEMU's user network (slirp), with `restrict=on`: the guest side
/// reaches only QEMU's own virtual gateway and services (10.0.2.2/3), never another
/// host, so nothing leaves the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioNic {
    /// `52:54:00:12:34:56` style.
    pub mac: String,
}

/// One QEMU machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    pub iso: PathBuf,
    pub memory_mib: u32,
    pub smp: u32,
    pub accel: Accel,
    /// virtio-blk disks, in PCI order (vda first), after the NICs.
    pub disks: Vec<VirtioDisk>,
    /// virtio-net NICs, in PCI order.
    pub nics: Vec<VirtioNic>,
    /// Appended after the standard arguments.
    pub extra_args: Vec<String>,
    /// For [`spawn`]: the serial log is also written to `target/qemu-logs/<log_name>.log`.
    pub log_name: Option<String>,
}

impl QemuConfig {
    /// TCG, 1024 MiB, 2 CPUs, no extra arguments, no log file.
    pub fn new(iso: impl Into<PathBuf>) -> Self {
        QemuConfig {
            iso: iso.into(),
            memory_mib: 1024,
            smp: 2,
            accel: Accel::Tcg,
            disks: Vec::new(),
            nics: Vec::new(),
            extra_args: Vec::new(),
            log_name: None,
        }
    }

    /// The QEMU command. `interactive`: the serial line and QEMU's monitor share the
    /// terminal (`-serial mon:stdio`, Ctrl-A X quits) and stdio is inherited. Otherwise the
    /// serial line is QEMU's stdin/stdout (`-serial stdio -monitor none`), all three piped.
    pub fn command(&self, interactive: bool) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35"]);
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        cmd.arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.smp.to_string())
            .args(["-display", "none"]);
        if interactive {
            cmd.args(["-serial", "mon:stdio"]);
        } else {
            cmd.args(["-serial", "stdio", "-monitor", "none"]);
        }
        cmd.args(["-no-reboot", "-device"])
            .arg(format!(
                "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
            ))
            .arg("-cdrom")
            .arg(&self.iso)
            .args(["-boot", "d"]);
        if self.nics.is_empty() {
            // Without this QEMU adds its default NIC on an unrestricted user network.
            cmd.args(["-nic", "none"]);
        }
        for (i, nic) in self.nics.iter().enumerate() {
            cmd.arg("-netdev")
                .arg(format!("user,id=n{i},restrict=on"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=n{i},mac={}", nic.mac));
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let mut drive = format!("if=none,id=vd{i},format=raw,file=");
            // QEMU's option syntax doubles commas inside a value.
            drive.push_str(&disk.image.display().to_string().replace(',', ",,"));
            if disk.read_only {
                drive.push_str(",readonly=on");
            }
            cmd.arg("-drive")
                .arg(drive)
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=vd{i}"));
        }
        cmd.args(&self.extra_args);
        if interactive {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        cmd
    }
}

/// How QEMU ended, read from its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitOutcome {
    /// 33: the hypervisor wrote 0x10 to the debug-exit port (halted cleanly, tests passed).
    HaltedCleanly,
    /// 35: 0x11, a panic or a fatal exception in the hypervisor.
    Fatal,
    /// 37: 0x12, the hypervisor refused to boot (a configuration error such as no dom0).
    RefusedToBoot,
    /// 39: 0x13, dom0 crashed (or shut down with reason crash): a failing PV test kernel.
    GuestCrashed,
    /// Any other status: 0 when QEMU was quit (Ctrl-A X) or the machine reset (a triple
    /// fault, with `-no-reboot`), 1 when QEMU itself failed, other debug-exit values.
    Other(i32),
    /// QEMU was killed by this signal.
    Signal(i32),
}

impl ExitOutcome {
    pub fn from_code(code: i32) -> Self {
        match code {
            33 => ExitOutcome::HaltedCleanly,
            35 => ExitOutcome::Fatal,
            37 => ExitOutcome::RefusedToBoot,
            39 => ExitOutcome::GuestCrashed,
            other => ExitOutcome::Other(other),
        }
    }

    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitOutcome::from_code(code),
            (None, Some(signal)) => ExitOutcome::Signal(signal),
            (None, None) => ExitOutcome::Other(-1),
        }
    }

    /// A sentence for the user.
    pub fn describe(&self) -> String {
        match self {
            ExitOutcome::HaltedCleanly => {
                "Ferrovisor halted cleanly (debug-exit 0x10, QEMU status 33)".to_owned()
            }
            ExitOutcome::Fatal => {
                "Ferrovisor panicked or took a fatal exception (debug-exit 0x11, QEMU status 35)"
                    .to_owned()
            }
            ExitOutcome::RefusedToBoot => {
                "Ferrovisor refused to boot: a configuration error such as no dom0 module \
                 (debug-exit 0x12, QEMU status 37)"
                    .to_owned()
            }
            ExitOutcome::GuestCrashed => {
                "dom0 crashed, or shut down with reason crash (debug-exit 0x13, QEMU status 39)"
                    .to_owned()
            }
            ExitOutcome::Other(0) => "QEMU exited with status 0: quit from its monitor, or the \
                 machine reset (a triple fault stops QEMU under -no-reboot)"
                .to_owned(),
            ExitOutcome::Other(code) if *code & 1 == 1 && *code > 1 => format!(
                "QEMU exited with status {code}: debug-exit value {:#x}, which Ferrovisor does not define",
                code >> 1
            ),
            ExitOutcome::Other(code) => format!("QEMU exited with status {code}"),
            ExitOutcome::Signal(signal) => format!("QEMU was killed by signal {signal}"),
        }
    }
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \`, and
/// two-byte `ESC x`) and carriage returns, which GRUB's and the hypervisor's serial output
/// is full of, so that `(?m)` regexes can match lines. An unfinished sequence at the end of
/// the input is dropped.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in 0x40..=0x7e.
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// A regex match in the serial log, owned. Offsets are into the stripped log
/// ([`Session::stripped_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// The whole match.
    pub text: String,
    /// Capture groups; `groups[0]` is the whole match.
    pub groups: Vec<Option<String>>,
    pub start: usize,
    pub end: usize,
}

impl Matched {
    fn new(caps: &regex::Captures<'_>, base: usize) -> Self {
        let whole = caps.get(0).expect("group 0 always participates");
        Matched {
            text: whole.as_str().to_owned(),
            groups: caps
                .iter()
                .map(|g| g.map(|m| m.as_str().to_owned()))
                .collect(),
            start: base + whole.start(),
            end: base + whole.end(),
        }
    }

    /// Capture group `i`, or "" when it did not participate.
    pub fn group(&self, i: usize) -> &str {
        self.groups.get(i).and_then(|g| g.as_deref()).unwrap_or("")
    }

    /// Capture group `i` parsed as a number (or anything else `FromStr`).
    pub fn parse<T: std::str::FromStr>(&self, i: usize) -> anyhow::Result<T> {
        self.group(i).parse().map_err(|_| {
            anyhow!(
                "group {i} of {:?} is not a number: {:?}",
                self.text,
                self.group(i)
            )
        })
    }
}

/// The output QEMU has produced so far, shared with the reader threads.
#[derive(Default)]
struct Log {
    /// Everything read from QEMU's stdout (the serial line), as is.
    raw: Vec<u8>,
    /// `raw` up to its last complete line, through [`strip_ansi`]. Only complete lines are
    /// matched, so that `(\d+)` never captures half a number still being printed.
    stripped: String,
    /// How much of `raw` is in `stripped`.
    consumed: usize,
    stderr: Vec<u8>,
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Log {
    fn refresh(&mut self) {
        let end = if self.stdout_closed {
            self.raw.len()
        } else {
            match self.raw[self.consumed..].iter().rposition(|&b| b == b'\n') {
                Some(i) => self.consumed + i + 1,
                None => return,
            }
        };
        if end > self.consumed {
            let chunk = String::from_utf8_lossy(&self.raw[self.consumed..end]);
            self.stripped.push_str(&strip_ansi(&chunk));
            self.consumed = end;
        }
    }
}

type SharedLog = Arc<(Mutex<Log>, Condvar)>;

fn lock(log: &SharedLog) -> MutexGuard<'_, Log> {
    // A reader thread cannot panic while holding the lock; recover the data regardless.
    log.0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running QEMU whose serial line we read and write. Dropping it kills QEMU.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    log: SharedLog,
    log_file: Option<PathBuf>,
    /// Offset in the stripped log where the next [`Session::expect`] starts looking.
    cursor: usize,
    exit: Option<ExitStatus>,
    started: Instant,
}

/// The directory of the serial logs of [`spawn`]ed sessions.
pub fn log_dir() -> PathBuf {
    crate::target_dir().join("qemu-logs")
}

/// Starts QEMU with `cfg.command(false)` and the threads that collect its output.
pub fn spawn(cfg: &QemuConfig) -> anyhow::Result<Session> {
    if !cfg.iso.is_file() {
        bail!("no ISO at {}", cfg.iso.display());
    }
    let log_file = match &cfg.log_name {
        Some(name) => {
            fs::create_dir_all(log_dir())
                .with_context(|| format!("cannot create {}", log_dir().display()))?;
            Some(log_dir().join(format!("{name}.log")))
        }
        None => None,
    };
    let tee = log_file
        .as_ref()
        .map(|path| File::create(path).with_context(|| format!("cannot create {}", path.display())))
        .transpose()?;

    let mut cmd = cfg.command(false);
    let line = crate::display_command(&cmd);
    let mut child = cmd.spawn().with_context(|| {
        format!("cannot start `{line}`: is qemu-system-x86 installed? (`cargo xtask deps`)")
    })?;
    let stdout = child.stdout.take().context("QEMU's stdout is piped")?;
    let stderr = child.stderr.take().context("QEMU's stderr is piped")?;
    let stdin = child.stdin.take();

    let log: SharedLog = Arc::default();
    {
        let log = Arc::clone(&log);
        thread::Builder::new()
            .name("qemu-serial".into())
            .spawn(move || pump(stdout, tee, &log, false))
            .context("cannot start the serial reader thread")?;
    }
    {
        let log = Arc::clone(&log);
        thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || pump(stderr, None, &log, true))
            .context("cannot start the stderr reader thread")?;
    }
    Ok(Session {
        child,
        stdin,
        log,
        log_file,
        cursor: 0,
        exit: None,
        started: Instant::now(),
    })
}

/// Copies one of QEMU's output pipes into the shared log until EOF.
fn pump(mut from: impl Read, mut tee: Option<File>, log: &SharedLog, is_stderr: bool) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if let Some(file) = tee.as_mut() {
            // The log file is a convenience; the in-memory log is the reference.
            let _ = file.write_all(&buf[..n]);
        }
        let mut state = lock(log);
        if n == 0 {
            if is_stderr {
                state.stderr_closed = true;
            } else {
                state.stdout_closed = true;
                state.refresh();
            }
            log.1.notify_all();
            return;
        }
        if is_stderr {
            state.stderr.extend_from_slice(&buf[..n]);
        } else {
            state.raw.extend_from_slice(&buf[..n]);
            state.refresh();
        }
        log.1.notify_all();
    }
}

impl Session {
    /// Waits until `re` matches the serial log after the previous `expect`'s match, and
    /// moves past it. Fails when QEMU exits first or after `timeout`, with the whole log.
    pub fn expect(&mut self, re: &Regex, timeout: Duration) -> anyhow::Result<Matched> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.log);
        loop {
            if let Some(caps) = re.captures(&state.stripped[self.cursor..]) {
                let matched = Matched::new(&caps, self.cursor);
                self.cursor = matched.end;
                return Ok(matched);
            }
            if state.stdout_closed {
                drop(state);
                let status = self.reap(Duration::from_secs(5));
                return Err(self.failure(&format!(
                    "QEMU closed the serial line ({}) before /{re}/ appeared",
                    status.map_or_else(
                        || "still running".to_owned(),
                        |s| ExitOutcome::from_status(s).describe()
                    )
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(self.failure(&format!(
                    "timed out after {} s waiting for /{re}/ in the serial log",
                    timeout.as_secs_f32()
                )));
            }
            state = self
                .log
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The first match of `re` anywhere in the serial log so far (complete lines only),
    /// starting at offset `from` of the stripped log. Does not wait or move the cursor.
    pub fn find_from(&self, re: &Regex, from: usize) -> Option<Matched> {
        let state = lock(&self.log);
        let from = from.min(state.stripped.len());
        re.captures(&state.stripped[from..])
            .map(|caps| Matched::new(&caps, from))
    }

    /// The first match of `re` anywhere in the serial log so far.
    pub fn find(&self, re: &Regex) -> Option<Matched> {
        self.find_from(re, 0)
    }

    /// Writes `s` to the serial line (QEMU's stdin).
    pub fn send(&mut self, s: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("QEMU's stdin is closed")?;
        stdin
            .write_all(s.as_bytes())
            .and_then(|()| stdin.flush())
            .context("cannot write to QEMU's serial line")
    }

    /// Waits up to `timeout` for QEMU to exit and reads its verdict. On timeout, kills QEMU
    /// and fails with the whole log.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitOutcome> {
        match self.reap(timeout) {
            Some(status) => {
                self.wait_for_eof(Duration::from_secs(5));
                Ok(ExitOutcome::from_status(status))
            }
            None => {
                self.kill();
                Err(self.failure(&format!(
                    "timed out after {} s waiting for QEMU to exit; killed it",
                    timeout.as_secs_f32()
                )))
            }
        }
    }

    /// Polls for QEMU's exit for up to `timeout`.
    fn reap(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exit.is_none() {
                self.exit = self.child.try_wait().ok().flatten();
            }
            if self.exit.is_some() || Instant::now() >= deadline {
                return self.exit;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// After QEMU exits, its pipes close: wait (bounded) for the readers to take the rest.
    fn wait_for_eof(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.log);
        while !(state.stdout_closed && state.stderr_closed) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .log
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Kills QEMU (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.wait_for_eof(Duration::from_secs(5));
    }

    /// The serial log so far, exactly as QEMU printed it (escape sequences included).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.log).raw).into_owned()
    }

    /// The serial log so far through [`strip_ansi`] (the text regexes match against).
    pub fn stripped_output(&self) -> String {
        let state = lock(&self.log);
        let mut text = state.stripped.clone();
        text.push_str(&strip_ansi(&String::from_utf8_lossy(
            &state.raw[state.consumed..],
        )));
        text
    }

    /// What QEMU itself printed to stderr.
    pub fn qemu_stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.log).stderr).into_owned()
    }

    /// Where the serial log is also written, if a log name was given.
    pub fn log_file(&self) -> Option<&Path> {
        self.log_file.as_deref()
    }

    /// The whole serial log (escape sequences stripped so that it reads in a terminal),
    /// QEMU's stderr and the raw log's path, for error messages.
    pub fn report(&self) -> String {
        let mut report = format!("after {:.1} s", self.started.elapsed().as_secs_f32());
        if let Some(path) = &self.log_file {
            report.push_str(&format!("; raw serial log: {}", path.display()));
        }
        let stderr = self.qemu_stderr();
        if !stderr.trim().is_empty() {
            report.push_str(&format!("\n----- QEMU stderr -----\n{}", stderr.trim_end()));
        }
        report.push_str(&format!(
            "\n----- serial log (ANSI escapes stripped) -----\n{}\n----- end of serial log -----",
            self.stripped_output().trim_end()
        ));
        report
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!("{what}\n{}", self.report())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pid", &self.child.id())
            .field("log_file", &self.log_file)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_grub_escapes_and_crs() {
        let raw = "\x1b[0m\x1b[30m\x1b[47m\x1b[2J\x1b[1;1HGNU GRUB\r\n\x1b]0;title\x07\x1b(Bok\x1b[?25l\r\n\x1b[1";
        assert_eq!(strip_ansi(raw), "GNU GRUB\nok\n");
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(ExitOutcome::from_code(33), ExitOutcome::HaltedCleanly);
        assert_eq!(ExitOutcome::from_code(35), ExitOutcome::Fatal);
        assert_eq!(ExitOutcome::from_code(37), ExitOutcome::RefusedToBoot);
        assert_eq!(ExitOutcome::from_code(39), ExitOutcome::GuestCrashed);
        assert_eq!(ExitOutcome::from_code(0), ExitOutcome::Other(0));
        assert!(ExitOutcome::from_code(39).describe().contains("0x13"));
    }

    #[test]
    fn test_command_pipes_the_serial_line() {
        let cmd = QemuConfig::new("/x.iso").command(false);
        let line = crate::display_command(&cmd);
        assert_eq!(
            line,
            "qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 1024 -smp 2 -display none \
             -serial stdio -monitor none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
             -cdrom /x.iso -boot d -nic none"
        );
    }

    #[test]
    fn virtio_devices_are_added_with_restricted_user_networking() {
        let mut cfg = QemuConfig::new("/x.iso");
        cfg.nics = vec![VirtioNic {
            mac: "52:54:00:12:34:56".into(),
        }];
        cfg.disks = vec![
            VirtioDisk {
                image: "/t/a,b.img".into(),
                read_only: false,
            },
            VirtioDisk {
                image: "/t/c.img".into(),
                read_only: true,
            },
        ];
        let line = crate::display_command(&cfg.command(false));
        assert!(line.contains(
            "-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"
        ));
        assert!(line.contains(
            "-drive if=none,id=vd0,format=raw,file=/t/a,,b.img -device virtio-blk-pci,drive=vd0"
        ));
        assert!(line.contains(
            "-drive if=none,id=vd1,format=raw,file=/t/c.img,readonly=on -device virtio-blk-pci,drive=vd1"
        ));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let mut cfg = QemuConfig::new("/x.iso");
        cfg.accel = Accel::Kvm;
        cfg.extra_args = vec!["-s".into()];
        let line = crate::display_command(&cfg.command(true));
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(line.contains("-serial mon:stdio -no-reboot"));
        assert!(line.ends_with("-boot d -nic none -s"));
    }

    #[test]
    fn only_complete_lines_are_matched() {
        let mut log = Log::default();
        log.raw.extend_from_slice(b"memory: 10");
        log.refresh();
        assert_eq!(log.stripped, "");
        log.raw.extend_from_slice(b"23 MiB of RAM\r\ntail");
        log.refresh();
        assert_eq!(log.stripped, "memory: 1023 MiB of RAM\n");
        log.stdout_closed = true;
        log.refresh();
        assert_eq!(log.stripped, "memory: 1023 MiB of RAM\ntail");
    }
}
