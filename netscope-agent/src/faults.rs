//! Fault injection for tests: named points where a test makes an operation fail as a full or
//! failing disk, or a crash, would. Compiled in only with the `failpoints` feature (the test
//! suite's builds); without it every point is nothing at all, and the `fail` crate is not built.
//!
//! In a test process, `fail::cfg(name, action)` arms a point; a spawned agent reads the
//! `FAILPOINTS` variable at start (`name=action;…`, the `fail` crate's syntax).

/// A named fault point; with `failpoints` it may return early with the closure's value.
#[macro_export]
macro_rules! fault_point {
    ($name:literal, $ret:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $ret);
    };
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Arms the points named in `FAILPOINTS`, for the life of the returned guard (a process that
/// was built without `failpoints` has none, and says so when the variable is set).
pub fn from_env() -> Option<Box<dyn std::any::Any>> {
    #[cfg(feature = "failpoints")]
    {
        Some(Box::new(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        if std::env::var_os("FAILPOINTS").is_some() {
            tracing::warn!("FAILPOINTS is set, but this build has no fault points");
        }
        None
    }
}

/// Ends the process at once — as an OOM kill or a crash in a dependency would — when the point
/// `name` is armed with the payload `what` (`FAILPOINTS='name=return(what)'`).
pub fn abort_if(name: &str, what: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |payload| payload.as_deref() == Some(what)) == Some(true) {
        eprintln!("fault point {name}: aborting on {what}");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, what);
}

/// For tests whose code passes fault points: taken by every test of such a module, armed or
/// not, so that a point one test arms never fires in another running beside it.
#[cfg(test)]
pub fn serial() -> impl Drop {
    #[cfg(feature = "failpoints")]
    {
        fail::FailScenario::setup()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
