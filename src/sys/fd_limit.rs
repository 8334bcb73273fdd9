//! Open-file headroom. Every client connection, vmrun pipe and image download holds file
//! descriptors, and a launchd daemon on macOS starts with a soft limit of 256: a flood of
//! connections or a busy fleet would run out long before the hard limit.

/// macOS refuses a soft limit above OPEN_MAX (10240) even when the hard limit is unlimited.
const CEILING: libc::rlim_t = 10_240;

/// Raises the soft limit on open files towards the hard limit; returns the new soft limit.
pub fn raise() -> std::io::Result<libc::rlim_t> {
    let mut limit = get()?;
    let Some(wanted) = raised(limit) else {
        return Ok(limit.rlim_cur);
    };
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit only reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wanted)
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// The soft limit to set, or `None` to keep the current one: never lower it.
fn raised(limit: libc::rlimit) -> Option<libc::rlim_t> {
    let wanted = limit.rlim_max.min(CEILING);
    (limit.rlim_cur < wanted).then_some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: libc::rlim_t, hard: libc::rlim_t) -> libc::rlimit {
        libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        }
    }

    #[test]
    fn the_soft_limit_goes_to_the_hard_limit_under_the_ceiling_and_never_down() {
        // launchd's 256 with an unlimited hard limit: macOS's OPEN_MAX, not "unlimited".
        assert_eq!(raised(limit(256, libc::RLIM_INFINITY)), Some(CEILING));
        assert_eq!(raised(limit(256, 4096)), Some(4096));
        assert_eq!(raised(limit(4096, 4096)), None);
        assert_eq!(raised(limit(65_536, libc::RLIM_INFINITY)), None);
    }

    #[test]
    fn raise_sets_the_soft_limit_the_process_then_has() {
        let before = get().unwrap();
        let target = before.rlim_max.min(CEILING);
        // One below the target, so that raise has work to do; other tests in this process
        // never come near that many open files.
        let lowered = limit(target - 1, before.rlim_max);
        // SAFETY: setrlimit only reads the struct we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        assert_eq!(raise().unwrap(), target);
        let after = get().unwrap();
        assert_eq!((after.rlim_cur, after.rlim_max), (target, before.rlim_max));
        // Restore a soft limit above the ceiling if the process had one.
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &before) };
    }
}
