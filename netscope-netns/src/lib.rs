//! Named network namespaces for NetScope's tests and benchmarks (root only).
//!
//! A [`NetNs`] is created with `ip netns add` and its `lo` up, and deleted when dropped. A thread
//! enters one with [`NetNs::enter`] and is moved back to the namespace it came from when the
//! returned [`Entered`] drops; threads and processes it starts meanwhile start inside. Drop the
//! `Entered` before its `NetNs`.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    process::Command,
    thread::{self, JoinHandle},
};

/// A named network namespace with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME`, then `lo` up inside; the namespace is deleted again if that fails.
    pub fn create(name: impl Into<String>) -> io::Result<Self> {
        let name = name.into();
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> io::Result<Entered> {
        let original = File::open("/proc/thread-self/ns/net")?;
        set_netns(&self.path())?;
        Ok(Entered { original })
    }

    /// Runs `f` on a new thread inside this namespace (e.g. a server on the far side of a veth
    /// pair); the thread ends with `f`, so it never needs to leave.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<io::Result<T>> {
        let path = self.path();
        thread::spawn(move || {
            set_netns(&path)?;
            Ok(f())
        })
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The calling thread inside a [`NetNs`]; dropping it moves the thread back.
#[derive(Debug)]
pub struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: a valid namespace fd, the one this thread was in; affects this thread only.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

fn set_netns(path: &str) -> io::Result<()> {
    let target = File::open(path)?;
    // SAFETY: a valid namespace fd; setns affects the calling thread only.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run ip: {e} (apt package iproute2)"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
