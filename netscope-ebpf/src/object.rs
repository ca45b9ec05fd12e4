//! What every object of this crate carries (`netscope` and `netscope-baseline` each declare
//! `mod object;`): the panic handler and the license section.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program from which a panic would be reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

/// bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
