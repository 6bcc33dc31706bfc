//! The embedded default: a falconerid on this machine, with SQLite state and
//! local worker processes, started by the first command that needs it and
//! left running for the next ones.
//!
//! Files in the home directory (FALCONERI_HOME):
//! - `token`: the bearer token, made on first use, mode 0600.
//! - `server.lock`: held by a CLI while it looks for or starts the server, so
//!   two CLIs never start two servers.
//! - `falconerid.lock`: held by the server for its whole life. Nobody holding
//!   it means no server is running, whatever `server.json` says, and a stale
//!   pid in `server.json` (perhaps reused by another program) is never
//!   signaled. Waiting to take it is how `local stop` waits for the exit.
//! - `server.json`: `{ "url": ..., "pid": ... }` of the running server.
//! - `falconerid.log`: the server's stderr, appended to.
//!
//! The start-up handshake: the CLI spawns `falconeri internal server --home
//! DIR` detached ([`detach`]: its own session, stdin from /dev/null, stderr to
//! the log, no descriptor of the CLI's but those), with stdout piped. Once listening, the
//! server writes `server.json`, then prints exactly one line, `ready <url>`.
//! The CLI waits for that line (or the pipe closing, or a timeout) without
//! polling. Any other line is a start-up error, shown to the user.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use falconeri_common::{VERSION, api::VersionResponse, client::Client};
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::oneshot,
};

use crate::{
    cli,
    config::Config,
    output::{self, Table},
};

/// The line prefix by which the server says it is listening.
const READY_PREFIX: &str = "ready ";

/// Starts the line the CLI writes to the log before each start.
const START_MARKER: &str = "--- ";

/// The files of one home directory.
#[derive(Debug, Clone)]
struct Home {
    dir: PathBuf,
}

impl Home {
    fn new(dir: &Path) -> Home {
        Home {
            dir: dir.to_owned(),
        }
    }

    /// Creates the directory, readable by the user alone: it holds the token.
    fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))
    }

    fn token(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn start_lock(&self) -> PathBuf {
        self.dir.join("server.lock")
    }

    fn running_lock(&self) -> PathBuf {
        self.dir.join("falconerid.lock")
    }

    fn server_json(&self) -> PathBuf {
        self.dir.join("server.json")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("falconerid.log")
    }
}

/// Where the running server listens, as recorded in `server.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ServerInfo {
    url: String,
    pid: u32,
}

/// A client for the local server, starting the server if it is not running.
pub async fn ensure_server(config: &Config) -> Result<Client> {
    let home = Home::new(config.home()?);
    home.create()?;
    // Someone else may be starting the server right now; once they are done,
    // we find it running.
    let start_lock = open_lock_file(&home.start_lock())?;
    let wait = config.ready_timeout + config.probe_timeout;
    let _start_lock = tokio::time::timeout(wait, lock(start_lock))
        .await
        .map_err(|_| {
            anyhow!(
                "another falconeri has been starting the local server for {}; if it is stuck, \
                 remove {}",
                output::duration(wait),
                home.start_lock().display()
            )
        })??;
    let token = load_or_create_token(&home.dir)?;

    if is_held(&home.running_lock())? {
        let info = read_server_info(&home)?.ok_or_else(|| {
            anyhow!(
                "a local server holds {} but wrote no {}; see {}",
                home.running_lock().display(),
                home.server_json().display(),
                home.log().display()
            )
        })?;
        let client = client_for(&info.url, &token)?;
        let version = probe(&client, config.probe_timeout)
            .await
            .with_context(|| {
                format!(
                    "the local server (pid {}) is running but does not answer; see {}, or \
                     restart it with `falconeri local stop`",
                    info.pid,
                    home.log().display()
                )
            })?;
        if version.version != VERSION {
            eprintln!(
                "warning: the local server runs falconeri {}, but this is {VERSION}; \
                 restart it with `falconeri local stop`",
                version.version
            );
        }
        return Ok(client);
    }

    let url = start_server(&home, config.ready_timeout).await?;
    client_for(&url, &token)
}

/// Starts `falconeri internal server` and waits for its `ready` line.
async fn start_server(home: &Home, ready_timeout: Duration) -> Result<String> {
    let exe = std::env::current_exe()
        .context("cannot find the falconeri executable to start the local server")?;
    let log_path = home.log();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // A marker, so each start's messages are easy to find in the log.
    writeln!(
        log,
        "{START_MARKER}{} falconeri {VERSION} starting the local server",
        output::time(output::now_millis())
    )
    .with_context(|| format!("cannot write {}", log_path.display()))?;

    tracing::debug!(exe = %exe.display(), home = %home.dir.display(), "starting the local server");
    let mut command = tokio::process::Command::new(exe);
    // glibc gives each thread that allocates an arena of its own (up to 8
    // per core) and rarely hands their free pages back, so a server whose
    // request threads each parse log chunks keeps tens of MiB it no longer
    // uses (150 datums of bench/logs' job: 71 MiB peak, 52 MiB with two
    // arenas, and no slower). A value the user set wins; other
    // allocators ignore the variable, and the worker clears its command's
    // environment, so it goes no further than falconeri's own processes.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        command.env("MALLOC_ARENA_MAX", "2");
    }
    command
        .args(["internal", "server", "--home"])
        .arg(&home.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    detach(&mut command);
    let mut child = command.spawn().context("cannot start the local server")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the local server's stdout was not captured"))?;
    let mut lines = BufReader::new(stdout).lines();

    let see_log = || format!("see {}", log_path.display());
    let first_line = tokio::time::timeout(ready_timeout, async {
        match lines.next_line().await? {
            Some(line) => io::Result::Ok(Ok(line)),
            // The pipe closed without a line: the server has exited.
            None => Ok(Err(child.wait().await?)),
        }
    })
    .await;
    let line = match first_line {
        Ok(Ok(Ok(line))) => line,
        Ok(Ok(Err(status))) => {
            let why = last_error(&log_path)
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            bail!(
                "the local server exited ({status}) before it was ready{why}; {}",
                see_log()
            )
        }
        Ok(Err(err)) => {
            let _ = child.start_kill();
            return Err(anyhow::Error::new(err)
                .context(format!("cannot hear from the local server; {}", see_log())));
        }
        Err(_elapsed) => {
            // Nobody will use a server that missed its start-up window.
            let _ = child.start_kill();
            bail!(
                "the local server was not ready within {}; {}",
                output::duration(ready_timeout),
                see_log()
            )
        }
    };
    match parse_ready_line(&line) {
        Some(url) => {
            tracing::debug!(url, "the local server is ready");
            // Dropping `child` leaves the server running: it is not
            // `kill_on_drop`, and it must outlive this command.
            Ok(url.to_owned())
        }
        None => {
            let _ = child.start_kill();
            bail!(
                "the local server failed to start: {}; {}",
                line.trim(),
                see_log()
            )
        }
    }
}

/// Makes the server a daemon of its own as it starts: a session of its own
/// (so a Ctrl-C or a hang-up meant for this command's terminal does not stop
/// the server that later commands will use, and it has no controlling
/// terminal), and no open file descriptor but its stdin, stdout and stderr.
///
/// The descriptors matter because the server outlives this command: one it
/// inherited would stay open for the server's whole life. Ours are all
/// close-on-exec (Rust opens files that way), but the ones *we* inherited
/// need not be: run as `flock LOCK falconeri job run --local …`, the lock's
/// descriptor would be held by the server, and so the lock, until
/// `falconeri local stop`.
///
/// This needs `pre_exec`, which is `unsafe`: the closure runs in the forked
/// child, where only async-signal-safe calls are allowed. There is no safe
/// API for it (std and tokio have no "close other descriptors" option, and
/// marking them close-on-exec from the parent would need raw descriptor
/// numbers from /proc, which is unsafe too, and racy with other threads), so
/// the unsafe code is this one function.
#[allow(unsafe_code)]
fn detach(command: &mut tokio::process::Command) {
    // SAFETY: the closure calls only setsid(2), close_range(2), getrlimit(2)
    // and fcntl(2), all async-signal-safe; it allocates nothing, takes no
    // lock and touches no memory shared with the parent. It marks the
    // descriptors close-on-exec rather than closing them, so the pipe std
    // uses to report a failed exec (itself close-on-exec) keeps working.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            mark_inherited_fds_cloexec();
            Ok(())
        });
    }
}

/// Sets close-on-exec on every descriptor above 2. Runs between fork and
/// exec, so it must stay async-signal-safe (see [`detach`]).
#[allow(unsafe_code)]
fn mark_inherited_fds_cloexec() {
    // SAFETY: plain system calls on descriptor numbers, with no pointers
    // but the rlimit struct on our stack; a number that is not open fails
    // with EBADF and is ignored.
    unsafe {
        // Linux 5.11 and later: one call for all of them.
        #[cfg(target_os = "linux")]
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        // Older kernels and other systems: one fcntl per possible number, up
        // to the descriptor limit (capped, so a huge limit costs no more
        // than a few milliseconds).
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(65_536) as libc::c_int
        } else {
            1024
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The last `error: ...` line since the last start marker in the log: what
/// a server that failed to start said as it exited (`main` prints exactly
/// that).
fn last_error(log_path: &Path) -> Option<String> {
    // The log grows across starts; the end is all that matters.
    const TAIL: u64 = 16 * 1024;
    let mut file = File::open(log_path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        // Only this start's lines: an older failure would mislead.
        .take_while(|line| !line.starts_with(START_MARKER))
        .find_map(|line| line.strip_prefix("error: "))
        .map(str::to_owned)
}

/// The URL in a `ready <url>` line.
fn parse_ready_line(line: &str) -> Option<&str> {
    line.strip_prefix(READY_PREFIX)
        .map(str::trim)
        .filter(|url| !url.is_empty())
}

/// Runs the local server in the foreground: `falconeri internal server`.
pub async fn serve(config: &Config) -> Result<()> {
    // As falconerid's own binary does: inherit, and so be able to kill,
    // what a local worker killed outright leaves behind.
    falconeri_common::process_tree::become_subreaper();
    let home = Home::new(config.home()?);
    home.create()?;
    // Held until this process exits; see the module documentation.
    let running_lock = open_lock_file(&home.running_lock())?;
    match running_lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "a local server is already running for {} (see `falconeri local status`)",
            home.dir.display()
        ),
        Err(TryLockError::Error(err)) => {
            return Err(err)
                .with_context(|| format!("cannot lock {}", home.running_lock().display()));
        }
    }
    let token = load_or_create_token(&home.dir)?;
    let exe = std::env::current_exe().context("cannot find the falconeri executable")?;
    let worker_command = std::iter::once(exe.into_os_string())
        .chain(cli::worker_command_args())
        .collect();

    let server_config = falconerid::Config::local(&home.dir, token, worker_command);
    let server_json = home.server_json();
    let last_port = home.dir.join(falconerid::config::LAST_PORT_FILE);
    let result = falconerid::serve(server_config, move |addr: std::net::SocketAddr| {
        // Kept after shutdown: the next server tries this port first.
        if let Err(err) = fs::write(&last_port, addr.port().to_string()) {
            tracing::warn!(error = %err, "cannot record the server's port");
        }
        announce(&server_json, &format!("http://{addr}"));
    })
    .await;

    // After a graceful shutdown, so nobody is sent to a server that is gone.
    // (The pid check is only caution: the lock keeps other servers out.)
    if read_server_info(&home)
        .ok()
        .flatten()
        .is_some_and(|info| info.pid == std::process::id())
    {
        let _ = fs::remove_file(home.server_json());
    }
    drop(running_lock);
    result
}

/// Records the server's address and tells the waiting CLI: `server.json`
/// first, so whoever reads `ready` finds it.
fn announce(server_json: &Path, url: &str) {
    let info = ServerInfo {
        url: url.to_owned(),
        pid: std::process::id(),
    };
    let line = match write_server_info(server_json, &info) {
        Ok(()) => format!("{READY_PREFIX}{url}"),
        Err(err) => {
            tracing::error!("{err:#}");
            format!("error: {err:#}")
        }
    };
    // The CLI may have given up waiting (and closed the pipe): not a reason
    // to stop a server that later commands can still use.
    let mut stdout = io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!("cannot tell the CLI the server is ready: {err}");
    }
    drop(stdout);
    // Nobody reads the pipe any more; send anything later written to stdout
    // (by us or by processes we start) to the log instead.
    if let Err(err) = nix::unistd::dup2_stdout(io::stderr()) {
        tracing::warn!("cannot point stdout at the log: {err}");
    }
}

/// `falconeri local status`.
pub async fn status(config: &Config) -> Result<()> {
    let home = Home::new(config.home()?);
    let running = home.dir.exists() && is_held(&home.running_lock())?;
    let info = if running {
        read_server_info(&home)?
    } else {
        None
    };
    let version = match (&info, load_token(&home)?) {
        (Some(info), Some(token)) => Some(
            probe(&client_for(&info.url, &token)?, config.probe_timeout)
                .await
                .map_err(|err| format!("{err:#}")),
        ),
        _ => None,
    };

    if config.json() {
        return output::print_json(&serde_json::json!({
            "running": running,
            "url": info.as_ref().map(|info| &info.url),
            "pid": info.as_ref().map(|info| info.pid),
            "version": version.as_ref().and_then(|v| v.as_ref().ok()),
            "error": version.as_ref().and_then(|v| v.as_ref().err()),
            "home": home.dir,
            "log": home.log(),
        }));
    }
    let state = match &version {
        Some(Ok(version)) => format!(
            "running (falconeri {}, {} database, {} executor)",
            version.version, version.database, version.executor
        ),
        Some(Err(err)) => format!("running but not answering: {err}"),
        None if running => "running, address unknown".to_owned(),
        None => "not running (the next command that needs it starts it)".to_owned(),
    };
    let mut table = Table::default();
    table.row(["Status:", &state]);
    if let Some(info) = &info {
        table.row(["URL:", &info.url]);
        table.row(["PID:", &info.pid.to_string()]);
    }
    table.row(["Home:", &home.dir.display().to_string()]);
    table.row(["Log:", &home.log().display().to_string()]);
    print!("{}", table.render());
    Ok(())
}

/// `falconeri local stop`: SIGTERM, then wait for the server to let go of
/// its lock, which it does only by exiting.
pub async fn stop(config: &Config) -> Result<()> {
    let home = Home::new(config.home()?);
    if !home.dir.exists() || !is_held(&home.running_lock())? {
        // A `server.json` left by a server that died is stale.
        remove_if_exists(&home.server_json())?;
        println!("The local server is not running.");
        return Ok(());
    }
    let info = read_server_info(&home)?.ok_or_else(|| {
        anyhow!(
            "a local server holds {} but wrote no {}, so its pid is unknown",
            home.running_lock().display(),
            home.server_json().display()
        )
    })?;
    let pid = i32::try_from(info.pid)
        .map(Pid::from_raw)
        .with_context(|| format!("bad pid {} in {}", info.pid, home.server_json().display()))?;
    match kill(pid, Signal::SIGTERM) {
        // Already gone: the lock is about to be free.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot stop the local server (pid {pid})"));
        }
    }
    let running_lock = open_lock_file(&home.running_lock())?;
    tokio::time::timeout(config.stop_timeout, lock(running_lock))
        .await
        .map_err(|_| {
            anyhow!(
                "the local server (pid {pid}) did not stop within {}; see {}",
                output::duration(config.stop_timeout),
                home.log().display()
            )
        })??;
    remove_if_exists(&home.server_json())?;
    println!("Stopped the local server (pid {pid}).");
    Ok(())
}

/// The token in `home`, made (32 random bytes, hex) on first use.
fn load_or_create_token(home: &Path) -> Result<String> {
    if let Some(token) = load_token(&Home::new(home))? {
        return Ok(token);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let path = home.join("token");
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// The token, if one was made. An empty file (a first run cut short) counts
/// as none.
fn load_token(home: &Home) -> Result<Option<String>> {
    match fs::read_to_string(home.token()) {
        Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", home.token().display())),
    }
}

fn read_server_info(home: &Home) -> Result<Option<ServerInfo>> {
    let path = home.server_json();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is damaged; remove it", path.display()))
}

fn write_server_info(path: &Path, info: &ServerInfo) -> Result<()> {
    let json = serde_json::to_vec_pretty(info).context("cannot encode server.json")?;
    write_private(path, &json)
}

/// Writes a file readable by the user alone, atomically: readers see the old
/// contents or the new, never a half-written file.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only to new files; a leftover temporary file keeps
        // its old permissions otherwise.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|err| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(err).context(format!("cannot write {}", path.display()))
    })
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn client_for(url: &str, token: &str) -> Result<Client> {
    Client::new(url, Some(token.to_owned()))
        .with_context(|| format!("the local server's address {url:?} is not usable"))
}

/// Asks the server its version, giving up after `timeout`.
async fn probe(client: &Client, timeout: Duration) -> Result<VersionResponse> {
    tokio::time::timeout(timeout, client.version())
        .await
        .map_err(|_| anyhow!("no answer within {}", output::duration(timeout)))?
        .map_err(anyhow::Error::new)
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Takes an exclusive lock on `file`, which holds it until dropped.
///
/// The wait happens on a thread of its own rather than tokio's blocking pool,
/// so a caller that gives up (a timeout) does not keep the runtime from
/// shutting down.
async fn lock(file: File) -> Result<File> {
    let (sender, receiver) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(file.lock().map(|()| file));
    });
    receiver
        .await
        .context("the lock thread stopped")?
        .context("cannot take a file lock")
}

/// True if some process holds the lock on `path`.
fn is_held(path: &Path) -> Result<bool> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        // Ours now; closing the file releases it.
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("cannot check {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = load_or_create_token(dir.path()).expect("token");
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        let mode = fs::metadata(dir.path().join("token"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).expect("token"), token);
    }

    #[test]
    fn empty_token_file_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("token"), "\n").expect("write");
        let token = load_or_create_token(dir.path()).expect("token");
        assert_eq!(token.len(), 64);
        assert_eq!(
            fs::read_to_string(dir.path().join("token")).expect("read"),
            token
        );
    }

    #[test]
    fn tokens_differ_between_homes() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        assert_ne!(
            load_or_create_token(a.path()).expect("a"),
            load_or_create_token(b.path()).expect("b")
        );
    }

    #[test]
    fn ready_line() {
        assert_eq!(
            parse_ready_line("ready http://127.0.0.1:4000\n"),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(parse_ready_line("ready "), None);
        assert_eq!(parse_ready_line("error: cannot write server.json"), None);
    }

    #[test]
    fn start_up_error_is_found_in_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("falconerid.log");
        assert_eq!(last_error(&log), None);
        fs::write(&log, "error: an older failure\n--- starting\nINFO killed\n").expect("write");
        assert_eq!(last_error(&log), None);
        fs::write(
            &log,
            "--- starting\nINFO starting\nerror: cannot open SQLite database x: locked\n",
        )
        .expect("write");
        assert_eq!(
            last_error(&log).as_deref(),
            Some("cannot open SQLite database x: locked")
        );
    }

    #[test]
    fn server_info_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::new(dir.path());
        assert_eq!(read_server_info(&home).expect("read"), None);
        let info = ServerInfo {
            url: "http://127.0.0.1:1".into(),
            pid: 42,
        };
        write_server_info(&home.server_json(), &info).expect("write");
        assert_eq!(read_server_info(&home).expect("read"), Some(info));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["server.json"]);
    }

    #[test]
    fn lock_is_seen_as_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        assert!(!is_held(&path).expect("check"));
        let held = open_lock_file(&path).expect("open");
        held.lock().expect("lock");
        assert!(is_held(&path).expect("check"));
        drop(held);
        assert!(!is_held(&path).expect("check"));
    }
}
