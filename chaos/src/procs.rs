//! Child processes of a chaos run: each a `tollgate` subcommand with its own log file, killed
//! (`SIGKILL`), paused (`SIGSTOP`/`SIGCONT`) and restarted by PID. Dropping a `Proc` kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Proc {
    pub name: String,
    bin: PathBuf,
    pub args: Vec<String>,
    /// Extra arguments for the next start only (e.g. a skewed clock), cleared by `restart`.
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
    pub starts: u32,
    /// Exits the process took on its own (not a kill by the harness), before a restart.
    pub exits: Vec<String>,
}

impl Proc {
    pub fn new(name: &str, bin: &Path, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.to_owned(),
            bin: bin.to_path_buf(),
            args,
            log,
            child: None,
            paused: false,
            starts: 0,
            exits: Vec::new(),
        }
    }

    /// Starts the process with its arguments plus `extra`; its output is appended to the log.
    pub fn start_with(&mut self, extra: &[String]) -> std::io::Result<()> {
        self.kill();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .args(extra)
            .env("TOLLGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
        Ok(())
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        self.start_with(&[])
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Whether the process exited on its own (crashed), with its status.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            _ => None,
        }
    }

    /// Restarts after a fault that may make the process exit on its own (a store node stops on a
    /// full disk, possibly only after the space is back, when a buffered write fails): any exit
    /// is expected, not a crash — what an operator does after freeing the disk.
    pub fn restart_expected(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.start()
    }

    /// Reaps a process that exited as the fault expected (e.g. a store node stopping on a full
    /// disk), so it does not count as a crash.
    pub fn reap_expected_exit(&mut self) {
        if self.exited().is_some() {
            self.child = None;
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `kill -9`: no chance to flush or clean up. An exit the process already took on its own
    /// is kept in `exits` (a kill must not hide a crash).
    pub fn kill(&mut self) {
        if let Some(st) = self.exited() {
            self.exits.push(st);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    fn signal(&self, sig: libc::c_int) -> bool {
        let Some(pid) = self.pid() else { return false };
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        kill_pid(pid, sig)
    }

    /// `SIGSTOP`: the process freezes with its sockets open (a GC pause, a stuck VM).
    pub fn pause(&mut self) -> bool {
        let ok = self.signal(libc::SIGSTOP);
        self.paused |= ok;
        ok
    }

    pub fn resume(&mut self) -> bool {
        let ok = self.signal(libc::SIGCONT);
        if ok {
            self.paused = false;
        }
        ok
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}

#[allow(unsafe_code)]
fn kill_pid(pid: libc::pid_t, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}
