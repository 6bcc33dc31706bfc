//! The processes this process started, and everything they started in turn,
//! found and killed as one tree, so that no process a datum's command
//! started outlives it: not a `setsid`'ed child (which leaves the command's
//! process group), not a double-forked daemon (whose parent exits at once).
//!
//! How it works, on Linux:
//! - The worker (and falconerid, for its local workers) makes itself a
//!   *child subreaper* ([`become_subreaper`]): a process whose parent dies is
//!   then reparented to it instead of to PID 1, so it stays in our tree.
//! - [`descendants`] walks `/proc` and follows parent links from this process
//!   down. A process group or session id can be changed by the process; its
//!   parent, under a subreaper, cannot be escaped.
//! - Children we start on purpose and still supervise (a running command, a
//!   live worker) are *kept*: [`spawn_kept`] registers them, under the same
//!   lock the sweep takes, so a sweep never kills or reaps a child that a
//!   `tokio::process::Child` still owns, nor one that is being started.
//! - [`kill_descendants`] sends SIGKILL to every descendant outside the kept
//!   subtrees and reaps them, round after round, until none is left.
//!
//! Elsewhere (no `/proc`, or `prctl` refused) the tree is empty and callers
//! fall back on killing the command's process group, which is all they did
//! before.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Read},
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::{signal::Signal, wait::waitpid},
    unistd::Pid,
};

/// At most this many kill-and-reap rounds: each round reaps at least one
/// process, and a round is needed only for processes forked between a scan
/// and their parent's death, so this bounds a fork bomb, not normal work.
const MAX_ROUNDS: usize = 64;

/// How long one round waits for its killed children to exit. SIGKILL takes
/// effect at once except for a process stuck in the kernel (an unreachable
/// NFS server); we would rather leave that one than hang the caller.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pids of the children this process supervises itself (see the module doc).
static KEPT: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn kept() -> MutexGuard<'static, Vec<i32>> {
    // The list is only pids; a panic elsewhere cannot leave it half-written.
    KEPT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process a child subreaper, so orphaned descendants are
/// reparented to it rather than escaping to PID 1. Process-wide, so only
/// binaries call it (never a library or a test harness that runs other
/// tests' children). Returns false where that is not possible.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        match nix::sys::prctl::set_child_subreaper(true) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, "cannot become a child subreaper; orphaned processes may escape");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// True if this process is a child subreaper.
pub fn is_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::get_child_subreaper().unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Runs `spawn` (which starts one child and returns it with its pid) under
/// the sweep's lock and keeps that pid out of every sweep until
/// [`release`]d. Hold nothing else across it: the lock is held for the
/// fork and exec only.
pub fn spawn_kept<T>(spawn: impl FnOnce() -> io::Result<(T, Option<u32>)>) -> io::Result<T> {
    let mut kept = kept();
    let (child, pid) = spawn()?;
    if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
        kept.push(pid);
    }
    Ok(child)
}

/// Lets sweeps see `pid` again, once its owner has reaped it (or given it up).
pub fn release(pid: i32) {
    let mut kept = kept();
    if let Some(index) = kept.iter().position(|&p| p == pid) {
        kept.swap_remove(index);
    }
}

/// One process, as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// Exited but not yet reaped.
    pub zombie: bool,
}

/// How much of a `/proc/<pid>/stat` line is read: the fields used (up to
/// the 22nd, the start time) end within it even with the longest command
/// name (64 bytes) and every number before them at its widest.
const STAT_PREFIX: usize = 1024;

/// The fields of `/proc/<pid>/stat` falconeri uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z`…
    pub state: u8,
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
    /// Clock ticks after boot.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat` (Linux); None if the process is gone or the
/// line is not as expected. See [`read_stat_in`].
pub fn read_stat(pid: u32) -> Option<Stat> {
    read_stat_in(Path::new(&format!("/proc/{pid}")), &mut [0; STAT_PREFIX])
}

/// Reads the `stat` file of the process directory `dir` with one `read` of
/// its start into `buf`. A sweep runs after every datum and reads every
/// process on the machine, and `read_to_string` spent six calls on each
/// (a size query, then reads of 32, 32, 64 and 128 bytes and one at the
/// end): most of a sweep's time.
fn read_stat_in(dir: &Path, buf: &mut [u8; STAT_PREFIX]) -> Option<Stat> {
    let mut file = std::fs::File::open(dir.join("stat")).ok()?;
    // procfs renders the whole line and hands back its start.
    let n = file.read(buf).ok()?;
    parse_stat(buf.get(..n)?)
}

/// Calls `each` with the pid and `stat` of every process on the machine
/// (Linux; none elsewhere), skipping those that exit during the walk.
fn for_each_process(mut each: impl FnMut(i32, Stat)) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut buf = [0u8; STAT_PREFIX];
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat_in(&entry.path(), &mut buf) {
            each(pid, stat);
        }
    }
}

/// Every process on the machine (Linux); empty elsewhere.
pub fn all_processes() -> Vec<Process> {
    let mut all = Vec::new();
    for_each_process(|pid, stat| {
        all.push(Process {
            pid,
            ppid: stat.ppid,
            zombie: stat.state == b'Z',
        });
    });
    all
}

/// Every live process of process group `pgrp` (Linux), with its `stat`.
pub fn group_members(pgrp: i32) -> Vec<Stat> {
    let mut members = Vec::new();
    for_each_process(|_, stat| {
        if stat.pgrp == pgrp && stat.state != b'Z' {
            members.push(stat);
        }
    });
    members
}

/// Parses (the start of) a `/proc/<pid>/stat` line. The command name comes
/// second, in parentheses, and may itself hold `)`, spaces or bytes that
/// are not UTF-8 (a process must not escape a sweep by its name), so the
/// fields are counted from the last `)`.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let end_of_name = stat.iter().rposition(|&b| b == b')')?;
    // From field 3 (the state) on.
    let mut fields = stat
        .get(end_of_name + 1..)?
        .split(u8::is_ascii_whitespace)
        .filter(|field| !field.is_empty());
    let state = match fields.next()? {
        [state] => *state,
        _ => return None,
    };
    let ppid = number(fields.next())?;
    let pgrp = number(fields.next())?;
    let start_time = number(fields.nth(16))?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        start_time,
    })
}

/// A decimal field of a `stat` line.
fn number<T: std::str::FromStr>(field: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(field?).ok()?.parse().ok()
}

/// The processes below `root` in `processes`, parents before children,
/// leaving out the subtree of every pid in `skip`.
pub fn descendants(processes: &[Process], root: i32, skip: &[i32]) -> Vec<Process> {
    let mut children: HashMap<i32, Vec<Process>> = HashMap::new();
    for process in processes {
        children.entry(process.ppid).or_default().push(*process);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if skip.contains(&child.pid) || !seen.insert(child.pid) {
                continue;
            }
            found.push(*child);
            next.push(child.pid);
        }
    }
    found
}

fn this_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Sends `signal` to every descendant of this process outside the kept
/// subtrees, and to the subtrees of `also` (kept children the caller owns,
/// themselves included). Returns how many processes got it.
pub fn signal_descendants(signal: Signal, also: &[i32]) -> usize {
    let kept = kept();
    let skip: Vec<i32> = kept.iter().copied().filter(|p| !also.contains(p)).collect();
    let victims = descendants(&all_processes(), this_pid(), &skip);
    drop(kept);
    victims
        .iter()
        .filter(|process| !process.zombie && send(process.pid, signal))
        .count()
}

/// Kills (SIGKILL) every descendant of this process outside the kept
/// subtrees and reaps it, until none is left. Returns how many live
/// processes were killed; zombies that were merely reaped don't count.
///
/// Each round kills what it finds and then waits for the ones that are our
/// own children. The top of the found tree always is (that is what being
/// below us means), so each round reaps something; their children, killed
/// in the same round, become ours when they die (we are their subreaper) and
/// are reaped in the next. A process forked just before its parent was
/// killed is found the same way.
pub async fn kill_descendants() -> usize {
    let me = this_pid();
    let mut killed = 0;
    for _ in 0..MAX_ROUNDS {
        // Scan and signal under the lock, so nothing that is being spawned
        // (and so not yet kept) can be taken for a leftover.
        let ours: Vec<i32> = {
            let kept = kept();
            let victims = descendants(&all_processes(), me, &kept);
            if victims.is_empty() {
                return killed;
            }
            for victim in victims.iter().filter(|process| !process.zombie) {
                if send(victim.pid, Signal::SIGKILL) {
                    killed += 1;
                }
            }
            victims
                .iter()
                .filter(|process| process.ppid == me)
                .map(|process| process.pid)
                .collect()
        };
        // Blocking waits on processes that were sent SIGKILL (or are
        // zombies already): no polling, and they return promptly. Each pid
        // is ours and not kept, so no `Child` handle is waiting on it.
        let reap = tokio::task::spawn_blocking(move || {
            for pid in ours {
                match waitpid(Pid::from_raw(pid), None) {
                    Ok(_) | Err(Errno::ECHILD) => {}
                    Err(err) => tracing::warn!(pid, %err, "cannot reap a killed process"),
                }
            }
        });
        if tokio::time::timeout(REAP_TIMEOUT, reap).await.is_err() {
            tracing::warn!("a killed process did not exit; leaving it");
            return killed;
        }
    }
    tracing::warn!(
        rounds = MAX_ROUNDS,
        "processes kept appearing while their tree was killed; some may be left"
    );
    killed
}

/// Sends `signal` to `pid`; true if it was delivered.
fn send(pid: i32, signal: Signal) -> bool {
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(err) => {
            tracing::warn!(pid, ?signal, %err, "cannot signal a process");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, ppid: i32) -> Process {
        Process {
            pid,
            ppid,
            zombie: false,
        }
    }

    #[test]
    fn stat_lines_are_read_past_odd_command_names() {
        let tail = b"S 7 40 40 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        let line = [b"42 (a) b (c)) ".as_slice(), tail].concat();
        assert_eq!(
            parse_stat(&line),
            Some(Stat {
                state: b'S',
                ppid: 7,
                pgrp: 40,
                start_time: 123456
            })
        );
        let line = [b"5 (\xff\xfe x) ".as_slice(), tail].concat();
        assert_eq!(parse_stat(&line).map(|stat| stat.ppid), Some(7));
        assert_eq!(parse_stat(b"9 (sleep"), None);
        assert_eq!(parse_stat(b"9 (sleep) S 1 9"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        let own = read_stat(std::process::id()).unwrap();
        assert_eq!(own.ppid, nix::unistd::getppid().as_raw());
        assert_ne!(own.state, b'Z');
    }

    /// A process whose name is not UTF-8 is found all the same, by the
    /// sweep and by a look for its group (it was skipped while stat lines
    /// were read as strings, so it outlived the sweep, and falconerid took
    /// a dead worker's command group for gone).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_named_in_bytes_that_are_not_utf8_is_found() {
        use std::{
            ffi::OsStr,
            os::unix::{ffi::OsStrExt, process::CommandExt},
        };
        let dir = tempfile::tempdir().unwrap();
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap();
        // The kernel names a process after the file it executes.
        let link = dir.path().join(OsStr::from_bytes(b"sl\xffep"));
        std::os::unix::fs::symlink(sleep, &link).unwrap();
        let mut child = std::process::Command::new(&link)
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap();
        let found = descendants(&all_processes(), this_pid(), &[]);
        let group = group_members(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(comm, b"sl\xffep\n");
        assert!(found.iter().any(|p| p.pid == pid), "{found:?}");
        assert_eq!(group.len(), 1, "{group:?}");
    }

    #[test]
    fn descendants_follow_parents_and_skip_kept_subtrees() {
        let all = [
            process(1, 0),
            process(10, 1),
            process(11, 10),
            process(12, 11),
            process(20, 10),
            process(21, 20),
            process(30, 1),
        ];
        let mut found: Vec<i32> = descendants(&all, 10, &[]).iter().map(|p| p.pid).collect();
        found.sort_unstable();
        assert_eq!(found, [11, 12, 20, 21]);
        let mut found: Vec<i32> = descendants(&all, 10, &[20]).iter().map(|p| p.pid).collect();
        found.sort_unstable();
        assert_eq!(found, [11, 12]);
        assert!(descendants(&all, 30, &[]).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_under_its_parent() {
        let me = this_pid();
        let parent = nix::unistd::getppid().as_raw();
        assert!(
            descendants(&all_processes(), parent, &[])
                .iter()
                .any(|p| p.pid == me)
        );
    }
}
