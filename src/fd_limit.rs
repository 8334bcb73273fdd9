//! Open-file headroom. Every client connection, vmrun pipe and image download holds file
//! descriptors, and a launchd daemon on macOS starts with a soft limit of 256: a flood of
//! connections or a busy fleet would run out long before the hard limit.

/// macOS refuses a soft limit above OPEN_MAX (10240) even when the hard limit is unlimited.
const CEILING: libc::rlim_t = 10_240;

/// Raises the soft limit on open files towards the hard limit; returns the new soft limit.
pub fn raise() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = limit.rlim_max.min(CEILING);
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_at_least_what_it_was() {
        let before = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0) as u64;
        let now = super::raise().unwrap();
        assert!(now >= before);
    }
}
