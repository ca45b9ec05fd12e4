//! What this kernel offers NetScope: per fact (connect latency, bytes, retransmits…), the hook
//! that serves it or why none can. Built by the probe (`probe --check`, the startup log) and
//! served by `/api/v1/status`; plain data here.

use serde::Serialize;

/// One fact NetScope reports, and what serves it here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fact {
    pub fact: &'static str,
    /// The hook that serves it, or `None`.
    pub hook: Option<String>,
    /// Why no hook can serve it (when `hook` is `None`), or what is limited.
    pub note: Option<String>,
    /// The probe refuses to run without it.
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub kernel: String,
    pub btf: bool,
    pub ring_buffer: bool,
    pub tc_mode: &'static str,
    pub missing_capabilities: Vec<&'static str>,
    pub facts: Vec<Fact>,
}

impl CheckReport {
    /// Every required fact has a hook (and the ring buffer exists).
    pub fn ok(&self) -> bool {
        self.ring_buffer && self.facts.iter().all(|f| f.hook.is_some() || !f.required)
    }

    pub fn render(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!(
            "kernel       {}\nBTF          {}\nring buffer  {}\nTC           {}\ncapabilities {}\n\n",
            self.kernel,
            yes(self.btf),
            yes(self.ring_buffer),
            self.tc_mode,
            if self.missing_capabilities.is_empty() {
                "ok".to_owned()
            } else {
                format!("missing {}", self.missing_capabilities.join(", "))
            }
        );
        for f in &self.facts {
            let served = f.hook.as_deref().unwrap_or("NONE");
            s.push_str(&format!("{:<22} {served}", f.fact));
            if let Some(note) = &f.note {
                s.push_str(&format!("  ({note})"));
            }
            s.push('\n');
        }
        s
    }
}

pub fn fact(fact: &'static str, required: bool, hook: Option<String>, note: Option<&str>) -> Fact {
    Fact {
        fact,
        hook,
        note: note.map(str::to_owned),
        required,
    }
}
