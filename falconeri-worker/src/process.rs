//! Running a datum's command: spawning it in its own process group, streaming
//! its stdout and stderr through to ours while keeping a bounded tail of both,
//! and killing everything it started when the datum must stop or is over.
//!
//! "Everything" is more than the process group: a command may `setsid` a
//! child, or double-fork a daemon whose parent exits at once. The worker is
//! a child subreaper ([`crate::run`]), so such orphans are reparented to it,
//! and [`RunningCommand::finish`] kills and reaps every descendant of the
//! worker that is not a command still running
//! ([`falconeri_common::process_tree`]). The worker runs one command at a
//! time, so that is exactly what this datum left behind.
//!
//! The leader is reaped by [`crate::usage::Reaper`], which also measures
//! its wall time, CPU and peak memory for the attempt's statistics.
//!
//! Nothing here talks to falconerid; [`crate::datum`] decides *when* to kill.

use std::{
    collections::{BTreeMap, VecDeque},
    ffi::{OsStr, OsString},
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    logs::{LineSplitter, LogSink},
    usage::{Exit, Reaper},
};
use anyhow::{Context, Result, bail};
use falconeri_common::{api::LogStream, process_tree};
use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    process::{ChildStderr, ChildStdout},
    task::JoinHandle,
};

/// How long a killed command gets to exit after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for the output pipes to close once the command and all
/// it started are gone. Where the worker cannot find every descendant (not
/// Linux, or not a subreaper), one that escaped may hold them open forever,
/// and we would rather lose its last words than hang the worker.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The worker's token: it must never reach the user's command.
const TOKEN_VAR: &str = "FALCONERI_TOKEN";

/// The last `capacity` bytes of a stream, plus a count of what was cut off.
#[derive(Debug)]
pub struct TailBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl TailBuffer {
    /// An empty buffer keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> TailBuffer {
        TailBuffer {
            // Output is usually small; grow on demand rather than reserving
            // the whole (1 MiB by default) capacity for every datum.
            bytes: VecDeque::with_capacity(capacity.min(8 * 1024)),
            capacity,
            dropped: 0,
        }
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.capacity {
            self.dropped += (self.bytes.len() + data.len() - self.capacity) as u64;
            self.bytes.clear();
            self.bytes.extend(&data[data.len() - self.capacity..]);
            return;
        }
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.bytes.drain(..overflow);
            self.dropped += overflow as u64;
        }
        self.bytes.extend(data);
    }

    /// The kept bytes as text. Invalid UTF-8 is replaced; when the front was
    /// cut, a note says how much, and a character split by the cut is skipped
    /// rather than shown as garbage.
    pub fn to_text(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(self.bytes.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        if self.dropped == 0 {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        // UTF-8 continuation bytes look like 0b10xx_xxxx; a character has at
        // most three of them.
        let skip = bytes
            .iter()
            .take(3)
            .take_while(|byte| (**byte & 0b1100_0000) == 0b1000_0000)
            .count();
        format!(
            "[falconeri: {} earlier bytes of output were dropped]\n{}",
            self.dropped + skip as u64,
            String::from_utf8_lossy(&bytes[skip..])
        )
    }
}

/// What to run and with which environment.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment; nothing else is inherited.
    pub env: BTreeMap<OsString, OsString>,
}

/// Where a datum's command finds its data, for [`command_env`].
#[derive(Debug, Clone, Copy)]
pub struct DatumEnv<'a> {
    pub pfs: &'a Path,
    pub scratch: &'a Path,
    pub datum_id: i64,
    pub job_id: i64,
}

/// The command's environment: `inherited` without the worker token, then the
/// spec's `env`, then the `FALCONERI_*` variables describing this datum (which
/// win, since they name the real directories).
pub fn command_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    spec_env: &BTreeMap<String, String>,
    datum: DatumEnv<'_>,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = inherited
        .into_iter()
        .filter(|(name, _)| name != TOKEN_VAR)
        .collect();
    env.extend(
        spec_env
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value))),
    );
    let ours = [
        ("FALCONERI_PFS", datum.pfs.as_os_str().to_owned()),
        ("FALCONERI_OUT", datum.pfs.join("out").into_os_string()),
        ("FALCONERI_SCRATCH", datum.scratch.as_os_str().to_owned()),
        ("FALCONERI_DATUM_ID", datum.datum_id.to_string().into()),
        ("FALCONERI_JOB_ID", datum.job_id.to_string().into()),
    ];
    env.extend(ours.into_iter().map(|(name, value)| (name.into(), value)));
    env
}

/// A command that is running, or has just exited and not yet been collected.
#[derive(Debug)]
pub struct RunningCommand {
    /// Reaps the leader and measures it.
    reaper: Reaper,
    /// The child's pid, which is also its process group id.
    pgid: Pid,
    tail: Arc<Mutex<TailBuffer>>,
    pumps: Vec<JoinHandle<()>>,
}

impl RunningCommand {
    /// Starts `spec` with stdin closed, in a new process group, with its
    /// output streamed to the worker's stdout and stderr and captured into a
    /// tail of `tail_bytes` bytes.
    #[cfg(test)]
    pub fn spawn(spec: &CommandSpec, tail_bytes: usize) -> Result<RunningCommand> {
        RunningCommand::spawn_logged(spec, tail_bytes, true, None)
    }

    /// [`RunningCommand::spawn`], also sending every line of stdout and
    /// stderr to `log` as it is read (the attempt's stored log), and
    /// passing it through to the worker's own only if `pass_output`.
    pub fn spawn_logged(
        spec: &CommandSpec,
        tail_bytes: usize,
        pass_output: bool,
        log: Option<LogSink>,
    ) -> Result<RunningCommand> {
        let command = |program: &OsStr| {
            let mut command = Command::new(program);
            command
                .arg0(&spec.program)
                .args(&spec.args)
                .env_clear()
                .envs(&spec.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own group, so killing the group reaches everything the
                // command started, and a Ctrl-C at the worker's terminal
                // reaches only the worker, which then stops the command
                // itself.
                .process_group(0);
            command
        };
        let started = Instant::now();
        // Kept out of leftover sweeps until its reaper has reaped it.
        let mut child = process_tree::spawn_kept(|| {
            let child = match program_path(spec) {
                Some(path) => match command(path.as_os_str()).spawn() {
                    // Not a binary nor a script with `#!`: execvp runs
                    // such a file with /bin/sh, posix_spawn refuses it.
                    Err(err) if err.raw_os_error() == Some(libc::ENOEXEC) => {
                        command(spec.program.as_ref()).spawn()?
                    }
                    spawned => spawned?,
                },
                None => command(spec.program.as_ref()).spawn()?,
            };
            let pid = child.id();
            Ok((child, Some(pid)))
        })
        .with_context(|| format!("cannot start {:?}", spec.program))?;
        let pgid = match i32::try_from(child.id()) {
            Ok(pid) => Pid::from_raw(pid),
            Err(_) => {
                let _ = child.kill();
                bail!("{:?} started but has no usable process id", spec.program)
            }
        };
        let reaper = match Reaper::start(pgid, started) {
            Ok(reaper) => reaper,
            Err(err) => {
                // Nobody would reap it: kill it and leave it to the sweep.
                let _ = child.kill();
                process_tree::release(pgid.as_raw());
                return Err(err).context("cannot start a thread to wait for the command");
            }
        };
        let tail = Arc::new(Mutex::new(TailBuffer::new(tail_bytes)));
        let mut pumps = Vec::with_capacity(2);
        child.stdout.iter().for_each(grow_pipe);
        child.stderr.iter().for_each(grow_pipe);
        let stdout = child.stdout.take().map(ChildStdout::from_std).transpose();
        let stderr = child.stderr.take().map(ChildStderr::from_std).transpose();
        let (stdout, stderr) = match (stdout, stderr) {
            (Ok(stdout), Ok(stderr)) => (stdout, stderr),
            (Err(err), _) | (_, Err(err)) => {
                reaper.signal_leader(Signal::SIGKILL);
                return Err(err).context("cannot read the command's output");
            }
        };
        if let Some(stdout) = stdout {
            pumps.push(tokio::spawn(pump(
                stdout,
                pass_output.then(tokio::io::stdout),
                tail.clone(),
                log.clone()
                    .map(|sink| (sink, LineSplitter::new(LogStream::Stdout))),
            )));
        }
        if let Some(stderr) = stderr {
            pumps.push(tokio::spawn(pump(
                stderr,
                pass_output.then(tokio::io::stderr),
                tail.clone(),
                log.map(|sink| (sink, LineSplitter::new(LogStream::Stderr))),
            )));
        }
        Ok(RunningCommand {
            reaper,
            pgid,
            tail,
            pumps,
        })
    }

    /// The process group id (the leader's pid).
    pub fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Waits for the command to exit. Cancel-safe, so it can sit in a
    /// `select!` next to timers.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.reaper.wait().await
    }

    /// How the command ended and what it used, once it has been waited
    /// for (see [`crate::usage`] for what the numbers cover).
    pub fn exit(&self) -> Option<Exit> {
        self.reaper.exit()
    }

    /// Stops the command: SIGTERM to its group and to every other process
    /// it started (so a `setsid`'ed child gets the same chance to clean up),
    /// up to `grace` for the leader to exit, then SIGKILL for whatever is
    /// left. Always reaps the leader; [`RunningCommand::finish`] kills and
    /// reaps the rest.
    pub async fn kill_group(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal_all(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.reaper.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(pgid = %self.pgid, "command ignored SIGTERM; sending SIGKILL");
                self.signal_all(Signal::SIGKILL);
                self.reaper.wait().await
            }
        };
        // Children that outlived the leader must not outlive the datum.
        signal_group(self.pgid, Signal::SIGKILL);
        status
    }

    /// Sends `signal` to the command's group and to every descendant of the
    /// worker outside other running commands, the leader's subtree included.
    fn signal_all(&self, signal: Signal) {
        signal_group(self.pgid, signal);
        process_tree::signal_descendants(signal, &[self.pgid.as_raw()]);
    }

    /// Ends the command's run after it exited: kills anything it left
    /// running, in its group or not (it would otherwise keep running into
    /// the next datum, or forever), reaps it, waits briefly for the output
    /// to drain, and returns the captured tail.
    pub async fn finish(mut self) -> String {
        let group_left = signal_group(self.pgid, Signal::SIGKILL);
        // The reaper releases the leader from the kept list once reaped.
        let killed = process_tree::kill_descendants().await;
        if group_left || killed > 0 {
            tracing::warn!(pgid = %self.pgid, killed, "command left processes behind; killed them");
        }
        let drain = async {
            for pump in &mut self.pumps {
                // A pump that panicked only loses output; nothing to recover.
                let _ = pump.await;
            }
        };
        if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!("command output did not close; some output may be missing");
            for pump in &self.pumps {
                pump.abort();
            }
        }
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_text()
    }
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        // A command dropped unfinished (an error path) must not run on
        // unsupervised; its reaper reaps and releases it once it is dead.
        if !self.reaper.is_reaped() {
            self.reaper.signal_leader(Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to the group `pgid`. Returns true if any process got it; a
/// group that is already empty is not an error.
fn signal_group(pgid: Pid, signal: Signal) -> bool {
    match killpg(pgid, signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(err) => {
            tracing::warn!(%pgid, ?signal, %err, "cannot signal the command's process group");
            false
        }
    }
}

/// Copies `source` to `sink` (if any) as it arrives, keeping a copy in
/// `tail` and sending its lines to the attempt's log, if any. A line still being
/// written goes to the log when it is due (see [`LineSplitter`]).
async fn pump(
    mut source: impl AsyncRead + Unpin,
    mut sink: Option<impl AsyncWrite + Unpin>,
    tail: Arc<Mutex<TailBuffer>>,
    mut log: Option<(LogSink, LineSplitter)>,
) {
    // A quarter of the pipe (PIPE_BYTES): a chatty command fills the pipe
    // between reads, and each read is one pass of this loop (a record
    // appended, a write through, a wake-up), so small reads cost the log
    // path turns: 8 KiB reads took eight times those of 64 KiB, and 256 KiB
    // take a quarter (see bench/logs).
    let mut chunk = vec![0u8; 256 * 1024];
    let mut sink_ok = true;
    loop {
        let due = log.as_ref().and_then(|(_, splitter)| splitter.due());
        let wait = async {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        // `read` is cancel-safe: a read that loses the race reads nothing.
        let read = tokio::select! {
            read = source.read(&mut chunk) => read,
            () = wait => {
                if let Some((log, splitter)) = &mut log {
                    splitter.flush(log).await;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(%err, "cannot read the command's output");
                break;
            }
        };
        let data = &chunk[..n];
        if let Some((log, splitter)) = &mut log {
            splitter.push(log, data).await;
        }
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(data);
        // Our own stdout may be closed (a detached worker); keep capturing
        // for the report even so, and complain only once.
        if let Some(sink) = sink.as_mut().filter(|_| sink_ok) {
            let written = async {
                sink.write_all(data).await?;
                sink.flush().await
            };
            if let Err(err) = written.await {
                tracing::warn!(%err, "cannot pass the command's output through");
                sink_ok = false;
            }
        }
    }
    if let Some((log, splitter)) = &mut log {
        splitter.flush(log).await;
    }
}

/// Where the command's own `PATH` (or, without one, execvp's default)
/// finds `spec.program`, when it is a bare name; None for a name with a
/// `/` (already a path) or one nothing on that `PATH` holds, which
/// `Command` then looks up itself, failing with the error execvp gives.
///
/// Started by its path, the command is spawned with posix_spawn (the
/// parent's memory shared until the exec, as vfork does). Given a bare
/// name and an environment of its own, std would fork instead, copying
/// the worker's page tables for every datum and faulting pages back in
/// afterwards: a sixth of the CPU of the workers and their commands on
/// tiny datums, more with an attempt's log buffers (see
/// guide/src/performance.md, "Logs").
/// `arg0` keeps the name the spec gave as the command's `$0`.
fn program_path(spec: &CommandSpec) -> Option<PathBuf> {
    if spec.program.contains('/') {
        return None;
    }
    let path = spec
        .env
        .get(OsStr::new("PATH"))
        .map_or(OsStr::new(DEFAULT_PATH), OsString::as_os_str);
    let cwd = std::env::current_dir().ok()?;
    which::which_in(&spec.program, Some(path), cwd).ok()
}

/// glibc's search path for execvp when the environment has no `PATH`
/// (`confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// How large the command's output pipes are made.
const PIPE_BYTES: i32 = 1024 * 1024;

/// Makes a pipe of the command's output 1 MiB rather than Linux's 64 KiB:
/// a chatty command then writes on while the worker takes the last read,
/// and the two wake each other up to sixteen times less often (each
/// wake-up a context switch on a busy machine). Best effort: above
/// `/proc/sys/fs/pipe-max-size` (1 MiB unless lowered) the kernel refuses
/// and the pipe keeps its size.
fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use nix::sys::signal::kill;

    use super::*;

    fn tail_of(capacity: usize, chunks: &[&[u8]]) -> TailBuffer {
        let mut tail = TailBuffer::new(capacity);
        for chunk in chunks {
            tail.push(chunk);
        }
        tail
    }

    #[test]
    fn tail_buffer_keeps_everything_that_fits() {
        let tail = tail_of(10, &[b"abc", b"def"]);
        assert_eq!(tail.dropped, 0);
        assert_eq!(tail.to_text(), "abcdef");
        assert_eq!(tail_of(10, &[]).to_text(), "");
    }

    #[test]
    fn tail_buffer_keeps_only_the_tail() {
        let tail = tail_of(5, &[b"abc", b"def", b"gh"]);
        assert_eq!(tail.dropped, 3);
        assert_eq!(
            tail.to_text(),
            "[falconeri: 3 earlier bytes of output were dropped]\ndefgh"
        );

        // One chunk bigger than the whole buffer.
        let tail = tail_of(4, &[b"xy", b"0123456789"]);
        assert_eq!(tail.dropped, 8);
        assert!(tail.to_text().ends_with("]\n6789"), "{}", tail.to_text());

        let tail = tail_of(0, &[b"abc"]);
        assert_eq!(tail.dropped, 3);
        assert!(tail.to_text().ends_with("]\n"));
    }

    #[test]
    fn tail_buffer_is_lossy_utf8() {
        // "é" is two bytes; cutting after its first byte leaves a stray
        // continuation byte, which is skipped and counted as dropped.
        let tail = tail_of(4, &["aé".as_bytes(), b"xyz"]);
        assert_eq!(tail.dropped, 2);
        assert_eq!(
            tail.to_text(),
            "[falconeri: 3 earlier bytes of output were dropped]\nxyz"
        );
        let tail = tail_of(10, &[b"ok \xff end"]);
        assert_eq!(tail.to_text(), "ok \u{fffd} end");
    }

    fn datum_env<'a>(pfs: &'a Path, scratch: &'a Path) -> DatumEnv<'a> {
        DatumEnv {
            pfs,
            scratch,
            datum_id: 7,
            job_id: 3,
        }
    }

    #[test]
    fn env_drops_the_token_and_sets_ours() {
        let inherited = [
            ("PATH", "/bin"),
            ("FALCONERI_TOKEN", "secret"),
            ("FALCONERI_PFS", "/wrong"),
            ("KEEP", "inherited"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let spec_env = BTreeMap::from([
            ("KEEP".to_owned(), "from spec".to_owned()),
            ("FALCONERI_OUT".to_owned(), "/also/wrong".to_owned()),
        ]);
        let env = command_env(
            inherited,
            &spec_env,
            datum_env(Path::new("/w/pfs"), Path::new("/w/scratch")),
        );
        let get = |name: &str| env.get(&OsString::from(name)).map(|v| v.to_str().unwrap());
        assert_eq!(get("FALCONERI_TOKEN"), None);
        assert_eq!(get("PATH"), Some("/bin"));
        assert_eq!(get("KEEP"), Some("from spec"));
        assert_eq!(get("FALCONERI_PFS"), Some("/w/pfs"));
        assert_eq!(get("FALCONERI_OUT"), Some("/w/pfs/out"));
        assert_eq!(get("FALCONERI_SCRATCH"), Some("/w/scratch"));
        assert_eq!(get("FALCONERI_DATUM_ID"), Some("7"));
        assert_eq!(get("FALCONERI_JOB_ID"), Some("3"));
    }

    fn sh(script: &str, env: BTreeMap<OsString, OsString>) -> CommandSpec {
        CommandSpec {
            program: "sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env,
        }
    }

    fn path_env() -> BTreeMap<OsString, OsString> {
        std::env::vars_os()
            .filter(|(name, _)| name == "PATH")
            .collect()
    }

    #[tokio::test]
    async fn the_token_does_not_reach_the_command() {
        let inherited = [
            (OsString::from("FALCONERI_TOKEN"), OsString::from("secret")),
            (OsString::from("PATH"), std::env::var_os("PATH").unwrap()),
        ];
        let env = command_env(
            inherited,
            &BTreeMap::new(),
            datum_env(Path::new("/p"), Path::new("/s")),
        );
        let spec = sh(r#"echo "token=[$FALCONERI_TOKEN] out=$FALCONERI_OUT""#, env);
        let mut running = RunningCommand::spawn(&spec, 1024).unwrap();
        assert!(running.wait().await.unwrap().success());
        assert_eq!(running.finish().await, "token=[] out=/p/out\n");
    }

    #[tokio::test]
    async fn output_captures_stdout_and_stderr() {
        let spec = sh(
            "echo to-stdout; echo to-stderr >&2; printf 'x%.0s' $(seq 1 100) >&2; exit 3",
            path_env(),
        );
        let mut running = RunningCommand::spawn(&spec, 1 << 20).unwrap();
        let status = running.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        let output = running.finish().await;
        assert!(output.contains("to-stdout\n"), "{output}");
        assert!(output.contains("to-stderr\n"), "{output}");
        assert!(output.ends_with(&"x".repeat(100)), "{output}");
    }

    /// The command writes into pipes of 1 MiB, as it sees them itself
    /// (`F_GETPIPE_SZ` is 1032), when the machine allows pipes that large.
    #[tokio::test]
    async fn the_command_writes_into_large_pipes() {
        let allowed: i64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let spec = sh(
            "python3 -c 'import fcntl, sys; print(fcntl.fcntl(1, 1032)); \
             print(fcntl.fcntl(2, 1032), file=sys.stderr)'",
            path_env(),
        );
        let mut running = RunningCommand::spawn(&spec, 1 << 20).unwrap();
        let status = running.wait().await.unwrap();
        let output = running.finish().await;
        assert!(status.success(), "{output}");
        let sizes: Vec<i64> = output.lines().map(|l| l.trim().parse().unwrap()).collect();
        let expected = if allowed >= i64::from(PIPE_BYTES) {
            i64::from(PIPE_BYTES)
        } else {
            64 * 1024
        };
        assert_eq!(sizes, vec![expected, expected], "{output}");
    }

    #[tokio::test]
    async fn output_tail_is_bounded() {
        let spec = sh("seq 1 1000", path_env());
        let mut running = RunningCommand::spawn(&spec, 16).unwrap();
        assert!(running.wait().await.unwrap().success());
        let output = running.finish().await;
        // 1..=1000, one per line, is 3893 bytes, of which 16 are kept.
        assert!(
            output.starts_with("[falconeri: 3877 earlier bytes of output were dropped]\n"),
            "{output}"
        );
        assert!(output.ends_with("\n998\n999\n1000\n"), "{output}");
    }

    /// Runs `script` to its end and returns how it ended and what it used.
    async fn measure(script: &str) -> crate::usage::Exit {
        let mut running = RunningCommand::spawn(&sh(script, path_env()), 1024).unwrap();
        running.wait().await.unwrap();
        let exit = running.exit().unwrap();
        running.finish().await;
        exit
    }

    const MIB: u64 = 1024 * 1024;

    /// The peak memory is the command's own: 200 MiB touched by a
    /// grandchild (python3 under sh, which waits for it) is seen, and a
    /// small command measured afterwards in the same process is small
    /// (`RUSAGE_CHILDREN` would still say 200 MiB).
    #[tokio::test]
    async fn peak_memory_is_measured_per_command() {
        let big = measure("python3 -c 'b = b\"x\" * (200 * 1024 * 1024)'; true").await;
        assert!(big.status.success());
        let peak = big.usage.max_rss_bytes;
        assert!(peak >= 200 * MIB, "peak {} MiB", peak / MIB);
        assert!(peak < 400 * MIB, "peak {} MiB", peak / MIB);
        let small = measure("true").await;
        assert!(small.usage.max_rss_bytes < 50 * MIB, "{:?}", small.usage);
        assert!(small.usage.max_rss_bytes > 0, "{:?}", small.usage);
    }

    /// A busy loop that runs until it has used half a second of CPU, in a
    /// grandchild, shows as at least that, most of it user time, while
    /// `sleep` uses next to none. The loop counts its own CPU time, not the
    /// clock's: on a busy machine a loop of half a second of wall time may
    /// get a fraction of it.
    #[tokio::test]
    async fn cpu_time_of_a_busy_loop_is_measured() {
        let busy = measure(
            // The clock is read every 100,000 turns: reading it is a
            // system call, which would make system time the larger part.
            "python3 -c 'import time\nwhile time.process_time() < 0.5:\n    for _ in range(100000): pass'; true",
        )
        .await;
        let usage = busy.usage;
        let cpu = usage.user + usage.system;
        assert!(usage.wall >= Duration::from_millis(500), "{usage:?}");
        assert!(cpu >= Duration::from_millis(500), "{usage:?}");
        assert!(cpu <= usage.wall + Duration::from_millis(100), "{usage:?}");
        assert!(usage.user > usage.system, "{usage:?}");

        let idle = measure("sleep 0.3").await.usage;
        assert!(idle.wall >= Duration::from_millis(300), "{idle:?}");
        assert!(
            idle.user + idle.system < Duration::from_millis(100),
            "{idle:?}"
        );
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_measured() {
        let exit = measure("exit 7").await;
        assert_eq!(exit.status.code(), Some(7));
        let exit = measure("kill -9 $$").await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&exit.status),
            Some(libc::SIGKILL)
        );
    }

    /// A command dropped while it runs is killed, reaped and released.
    #[tokio::test]
    async fn a_dropped_command_is_killed_and_reaped() {
        let running = RunningCommand::spawn(&sh("sleep 100", path_env()), 1024).unwrap();
        let pid = running.pgid().as_raw();
        drop(running);
        assert!(reaped(pid).await, "{pid} survived its command");
    }

    #[tokio::test]
    async fn spawn_failure_names_the_program() {
        let spec = CommandSpec {
            program: "no-such-program-falconeri".to_owned(),
            args: Vec::new(),
            env: path_env(),
        };
        let err = RunningCommand::spawn(&spec, 16).unwrap_err();
        assert!(
            format!("{err:#}").contains("no-such-program-falconeri"),
            "{err:#}"
        );
    }

    /// A directory holding an executable `name` with `content`.
    fn program_dir(name: &str, content: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn spec_with_path(program: &str, path: impl Into<OsString>) -> CommandSpec {
        CommandSpec {
            program: program.to_owned(),
            args: Vec::new(),
            env: [(OsString::from("PATH"), path.into())].into(),
        }
    }

    #[test]
    fn programs_are_found_on_the_commands_own_path() {
        let dir = program_dir("falconeri-test-tool", "#!/bin/sh\n");
        let spec = spec_with_path("falconeri-test-tool", dir.path());
        assert_eq!(
            program_path(&spec),
            Some(dir.path().join("falconeri-test-tool"))
        );
        // Not on the worker's own PATH: the command's is searched.
        assert_eq!(
            program_path(&CommandSpec {
                env: path_env(),
                ..spec.clone()
            }),
            None
        );
        // A name with a slash is a path already; a missing program is
        // left to `Command`, whose error names it.
        assert_eq!(
            program_path(&spec_with_path("./falconeri-test-tool", dir.path())),
            None
        );
        assert_eq!(
            program_path(&spec_with_path("no-such-program-falconeri", dir.path())),
            None
        );
        // Without a PATH, execvp's default.
        let bare = CommandSpec {
            env: BTreeMap::new(),
            ..spec_with_path("sh", "")
        };
        let found = program_path(&bare).unwrap();
        assert!(
            found == Path::new("/bin/sh") || found == Path::new("/usr/bin/sh"),
            "{found:?}"
        );
    }

    /// Started by the path found, the command still sees the name the spec
    /// gave as its `argv[0]`.
    #[tokio::test]
    async fn the_command_keeps_its_name_as_argv0() {
        let mut spec = spec_with_path("cat", std::env::var_os("PATH").unwrap());
        spec.args = vec!["/proc/self/cmdline".to_owned()];
        let mut running = RunningCommand::spawn(&spec, 1024).unwrap();
        assert!(running.wait().await.unwrap().success());
        assert_eq!(running.finish().await, "cat\u{0}/proc/self/cmdline\u{0}");
    }

    /// An executable file without `#!` runs with /bin/sh, as execvp runs it
    /// (posix_spawn alone refuses it).
    #[tokio::test]
    async fn a_script_without_a_shebang_still_runs() {
        let dir = program_dir("falconeri-test-script", "echo ran as a script\n");
        let path = std::env::join_paths(
            [dir.path().to_owned()]
                .into_iter()
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let spec = spec_with_path("falconeri-test-script", path);
        let mut running = RunningCommand::spawn(&spec, 1024).unwrap();
        assert!(running.wait().await.unwrap().success());
        assert_eq!(running.finish().await, "ran as a script\n");
    }

    /// True once no process has `pid`, polling for up to five seconds.
    async fn gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // Killed grandchildren are reparented to pid 1, which may never
            // reap them in a container, so a zombie counts as gone.
            if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) || is_zombie(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// True if `pid` has exited but not been reaped (Linux `/proc` only).
    fn is_zombie(pid: i32) -> bool {
        u32::try_from(pid)
            .ok()
            .and_then(process_tree::read_stat)
            .is_some_and(|stat| stat.state == b'Z')
    }

    #[tokio::test]
    async fn killing_the_group_kills_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 100 & echo $! > '{}'; sleep 100; ",
            pid_file.display()
        );
        let mut running = RunningCommand::spawn(&sh(&script, path_env()), 1024).unwrap();
        let leader = running.pgid().as_raw();

        // Wait until the shell has started its background sleep.
        let mut grandchild = None;
        for _ in 0..250 {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                grandchild = Some(pid);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grandchild = grandchild.unwrap();
        assert_eq!(kill(Pid::from_raw(grandchild), None), Ok(()));

        let started = Instant::now();
        // Bounded, so a broken group kill fails the test instead of hanging.
        let status = tokio::time::timeout(KILL_GRACE * 2, running.kill_group(KILL_GRACE))
            .await
            .expect("kill_group hung: is the command in its own group?")
            .unwrap();
        assert!(!status.success());
        assert!(
            started.elapsed() < KILL_GRACE,
            "SIGTERM should have been enough"
        );
        assert!(gone(grandchild).await, "grandchild {grandchild} survived");
        assert!(gone(leader).await, "leader {leader} survived");
        // And the pipes close, since nothing holds them any more.
        let finish = tokio::time::timeout(Duration::from_secs(1), running.finish()).await;
        assert!(finish.is_ok());
    }

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_is_killed() {
        let spec = sh(
            "trap '' TERM; echo ready; while :; do sleep 1; done",
            path_env(),
        );
        let mut running = RunningCommand::spawn(&spec, 1024).unwrap();
        // Give the shell time to install its trap.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let kill = running.kill_group(Duration::from_millis(300));
        let status = tokio::time::timeout(Duration::from_secs(10), kill)
            .await
            .expect("kill_group hung: is the command in its own group?")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(running.finish().await.contains("ready"));
    }

    /// The pids a script wrote, one per line, once it has written `count`.
    async fn pids_in(path: &Path, count: usize) -> Vec<i32> {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path) {
                let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.len() >= count {
                    return pids;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never held {count} pids", path.display());
    }

    /// True once `pid` is gone entirely: not running, and reaped.
    async fn reaped(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A script that leaves a `setsid`'ed sleep (out of the command's group
    /// and session) and a double-forked one (whose parent exits at once)
    /// behind, recording their pids, then runs `then`.
    fn escaping_script(pid_file: &Path, then: &str) -> String {
        let file = pid_file.display();
        format!(
            "setsid sh -c 'echo $$ >> \"{file}\"; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
             (sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >> \"{file}\") & \
             while [ \"$(wc -l < \"{file}\" 2>/dev/null)\" -lt 2 ]; do sleep 0.05; done; {then}"
        )
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn setsid_and_double_forked_children_do_not_outlive_the_command() {
        // As `crate::run` does for the worker binary.
        assert!(process_tree::become_subreaper());
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let script = escaping_script(&pid_file, "exit 0");
        let mut running = RunningCommand::spawn(&sh(&script, path_env()), 1024).unwrap();
        assert!(running.wait().await.unwrap().success());
        let pids = pids_in(&pid_file, 2).await;
        running.finish().await;
        for pid in pids {
            assert!(reaped(pid).await, "{pid} outlived the command");
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn setsid_and_double_forked_children_die_with_a_killed_command() {
        assert!(process_tree::become_subreaper());
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let script = escaping_script(&pid_file, "sleep 1000");
        let mut running = RunningCommand::spawn(&sh(&script, path_env()), 1024).unwrap();
        let pids = pids_in(&pid_file, 2).await;
        // What a datum timeout, a cancel or a worker stop does.
        running.kill_group(KILL_GRACE).await.unwrap();
        let finish = tokio::time::timeout(Duration::from_secs(1), running.finish()).await;
        assert!(finish.is_ok(), "the output pipes stayed open");
        for pid in pids {
            assert!(reaped(pid).await, "{pid} outlived the killed command");
        }
    }

    #[tokio::test]
    async fn background_leftovers_are_killed_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 100 & echo $! > '{}'", pid_file.display());
        let mut running = RunningCommand::spawn(&sh(&script, path_env()), 1024).unwrap();
        assert!(running.wait().await.unwrap().success());
        let grandchild: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Without the kill, the leftover sleep would hold stdout open and
        // finish() would wait for the drain timeout.
        let started = Instant::now();
        running.finish().await;
        assert!(started.elapsed() < OUTPUT_DRAIN_TIMEOUT);
        assert!(gone(grandchild).await, "leftover {grandchild} survived");
    }
}
