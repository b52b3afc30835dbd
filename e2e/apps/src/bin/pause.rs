//! The pod sandbox's pause process: sleeps until SIGTERM/SIGINT (then exits 0)
//! and reaps any zombie children it inherits as PID 1.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_child(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a plain handler is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

fn main() {
    install(libc::SIGTERM, on_stop);
    install(libc::SIGINT, on_stop);
    install(libc::SIGCHLD, on_child);
    while !STOP.load(Ordering::SeqCst) {
        // SAFETY: pause() just waits for a signal.
        unsafe { libc::pause() };
    }
}
