//! `fv`: Ferrovisor's dom0 control tool. The work is in the `fv` library; this wires it
//! to the process: arguments, the real hypervisor, stdin/stdout, exit status
//! (0 ok, 1 the command failed, 2 usage error).

use std::{
    fs::OpenOptions,
    io::{IsTerminal, Read},
    os::unix::process::CommandExt,
    process::{ExitCode, Stdio},
    sync::{mpsc, Mutex},
};

use clap::Parser;
use fv::{
    cli::Cli,
    hypervisor::{Hypervisor, TransportError},
    run::{run, Env, MonitorLaunch},
};

/// Where `fv` keeps its small state (`dmesg -c`'s offset).
const STATE_DIR: &str = "/run/fv";

#[cfg(target_os = "linux")]
fn open_hypervisor() -> Result<Box<dyn Hypervisor>, TransportError> {
    Ok(Box::new(fv::hypervisor::privcmd::Privcmd::open()?))
}

#[cfg(not(target_os = "linux"))]
fn open_hypervisor() -> Result<Box<dyn Hypervisor>, TransportError> {
    Err(TransportError::NoDevice {
        path: "/dev/xen/privcmd",
    })
}

/// 16 bytes from the kernel's random source (a fixed pattern mixed with the time if it is
/// unreadable, which only weakens UUID uniqueness).
fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_le_bytes());
        b[15] ^= std::process::id() as u8;
    }
    b
}

/// The terminal settings (`stty -g`) to restore when `fv` ends, if the console put its
/// terminal in raw mode.
static SAVED_TERMINAL: Mutex<Option<String>> = Mutex::new(None);

/// Runs `stty ARGS` on standard input (the terminal); its output if it succeeded.
fn stty(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// On a terminal, raw mode without echo for the console, as `xl console` does: keys
/// (Ctrl-C, Ctrl-], each character) go to the domain as typed. Uses `stty` (busybox
/// has it); without it the terminal stays line by line, and Ctrl-] then needs Enter.
fn raw_terminal() {
    if !std::io::stdin().is_terminal() {
        return;
    }
    let Some(saved) = stty(&["-g"]) else {
        return;
    };
    if stty(&["raw", "-echo"]).is_some() {
        *SAVED_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    }
}

fn restore_terminal() {
    let saved = SAVED_TERMINAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(saved) = saved {
        stty(&[&saved]);
        // The domain's output may have left the cursor anywhere.
        println!();
    }
}

/// Standard input, chunk by chunk, on a channel (the console polls it). Reading stops
/// at the chunk holding the console's escape byte: what is typed after it stays in the
/// terminal for the shell `fv` returns to.
fn stdin_channel() -> mpsc::Receiver<Vec<u8>> {
    raw_terminal();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            let last = buf[..n].contains(&fv::commands::CONSOLE_ESCAPE);
            if tx.send(buf[..n].to_vec()).is_err() || last {
                break;
            }
        }
    });
    rx
}

/// Starts `fv monitor` in the background: this binary again, in its own process group
/// (the terminal's Ctrl-C and hangup do not reach it), no input, its output appended to
/// its log. It is not waited for: it outlives `fv create` and init adopts it.
fn spawn_monitor(launch: &MonitorLaunch) -> std::io::Result<()> {
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    std::process::Command::new(std::env::current_exe()?)
        .args(launch.args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map(drop)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print to stdout and exit 0; usage errors exit 2.
        Err(e) => e.exit(),
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    let mut open = open_hypervisor;
    let mut random = random16;
    let mut input = stdin_channel;
    let mut spawn = spawn_monitor;
    let mut env = Env {
        open: &mut open,
        out: &mut out,
        err: &mut err,
        state_dir: STATE_DIR.into(),
        random: &mut random,
        console_input: &mut input,
        spawn_monitor: &mut spawn,
    };
    let result = run(cli.command, &mut env);
    drop(env);
    drop(out);
    restore_terminal();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fv: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
