//! Reaping a command's leader with its resource usage: its exit status, its
//! wall time, and the user and system CPU and peak memory the kernel
//! accounted to it.
//!
//! What the numbers cover: `wait4` returns the usage of the reaped process
//! together with every descendant *it* waited for (the kernel adds a reaped
//! child's usage to its parent's), so `sh -c 'a; b'` counts `a` and `b`.
//! CPU times are sums over those processes; the peak memory (`ru_maxrss`)
//! is the largest single process's peak resident set, not the sum of
//! processes that ran side by side. Processes the command left behind
//! (orphans reparented to the worker and killed by its sweep) are not
//! counted. The usage is the leader's own, so it is exact however many
//! commands other threads of the process run (which `RUSAGE_CHILDREN`,
//! shared by the whole process and keeping the largest peak ever, is not).
//!
//! Tokio's `Child` reaps without handing out the usage, so the leader is
//! spawned with the standard library and reaped here, by a thread of its
//! own: it waits for the exit without reaping (`waitid` with `WNOWAIT`),
//! then reaps with `wait4` under the same lock that anyone signalling the
//! leader takes, so a pid is never signalled once reaped (and perhaps
//! reused).

use std::{
    io,
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use falconeri_common::process_tree;
use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill},
        wait::{Id, WaitPidFlag, waitid},
    },
    unistd::Pid,
};
use tokio::sync::oneshot;

/// What the kernel accounted to a command (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// From just before the spawn to the leader's exit.
    pub wall: Duration,
    pub user: Duration,
    pub system: Duration,
    /// Peak resident set size of the largest single process, in bytes.
    pub max_rss_bytes: u64,
}

/// A reaped leader.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: ExitStatus,
    pub usage: Usage,
}

/// The thread that reaps one leader, and what it found.
#[derive(Debug)]
pub struct Reaper {
    pid: Pid,
    /// True once the leader was reaped; held while signalling it.
    reaped: Arc<Mutex<bool>>,
    receiver: Option<oneshot::Receiver<io::Result<Exit>>>,
    exit: Option<Exit>,
}

impl Reaper {
    /// Starts reaping `pid`, a child of this process spawned at `started`.
    /// Once reaped, the pid is released from the sweep's kept list.
    pub fn start(pid: Pid, started: Instant) -> io::Result<Reaper> {
        let reaped = Arc::new(Mutex::new(false));
        let (sender, receiver) = oneshot::channel();
        let flag = reaped.clone();
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                // The receiver may be gone (the command was dropped); the
                // leader is reaped and released all the same.
                let _ = sender.send(reap(pid, started, &flag));
            })?;
        Ok(Reaper {
            pid,
            reaped,
            receiver: Some(receiver),
            exit: None,
        })
    }

    /// Waits for the leader to be reaped. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(exit) = &self.exit {
            return Ok(exit.status);
        }
        let Some(receiver) = &mut self.receiver else {
            return Err(io::Error::other("the command could not be waited for"));
        };
        let result = receiver.await;
        self.receiver = None;
        let exit = match result {
            Ok(exit) => exit?,
            Err(_) => return Err(io::Error::other("the reaping thread ended unexpectedly")),
        };
        self.exit = Some(exit);
        Ok(exit.status)
    }

    /// The leader's exit and usage, once [`Reaper::wait`] returned it.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// True once the leader has been reaped.
    pub fn is_reaped(&self) -> bool {
        *lock(&self.reaped)
    }

    /// Sends `signal` to the leader unless it has been reaped.
    pub fn signal_leader(&self, signal: Signal) {
        let reaped = lock(&self.reaped);
        if !*reaped {
            let _ = kill(self.pid, signal);
        }
    }
}

fn lock(flag: &Mutex<bool>) -> MutexGuard<'_, bool> {
    // A bool cannot be left half-written.
    flag.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for `pid` to exit, then reaps it with its usage.
fn reap(pid: Pid, started: Instant, reaped: &Mutex<bool>) -> io::Result<Exit> {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    let wall = started.elapsed();
    let mut flag = lock(reaped);
    let (status, usage) = wait4_exited(pid)?;
    *flag = true;
    drop(flag);
    process_tree::release(pid.as_raw());
    Ok(Exit {
        status,
        usage: Usage {
            wall,
            user: duration(usage.ru_utime),
            system: duration(usage.ru_stime),
            // Linux counts it in KiB.
            max_rss_bytes: u64::try_from(usage.ru_maxrss)
                .unwrap_or(0)
                .saturating_mul(1024),
        },
    })
}

fn duration(time: libc::timeval) -> Duration {
    let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    Duration::from_secs(seconds) + Duration::from_micros(micros)
}

/// Reaps `pid`, which has exited, returning its status and usage. The one
/// unsafe call of the worker: neither nix nor rustix wraps `wait4`, and no
/// other call returns a child's usage.
#[allow(unsafe_code)]
fn wait4_exited(pid: Pid) -> io::Result<(ExitStatus, libc::rusage)> {
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: both pointers point to live, writable locals of the types
    // wait4 writes; it keeps no reference to them after returning.
    let reaped =
        unsafe { libc::wait4(pid.as_raw(), &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
    match reaped {
        -1 => Err(io::Error::last_os_error()),
        0 => Err(io::Error::other("the command had not exited after all")),
        // SAFETY: an all-zero rusage is a valid value (plain integers), and
        // wait4 filled it in since it reaped the child.
        _ => Ok((ExitStatus::from_raw(status), unsafe { usage.assume_init() })),
    }
}
