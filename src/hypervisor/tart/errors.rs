//! tart's stderr and exit code turned into typed errors with tart's own words (see the tart
//! contract: one line without `Error:` for its own errors, exit 2 for a missing VM, "not
//! running" and "already running!", `Error:` and exit 64 for bad arguments).

use crate::hypervisor::{Call, HypervisorError};

/// What a headless Mac on macOS 15+ answers every start with while its login keychain is
/// locked; the fix is on the Mac, not in the request.
const KEYCHAIN_HINT: &str = "on a headless Mac with macOS 15 or later this is a locked login keychain: log in to the Mac once (screen sharing will do) or run `security unlock-keychain ~/Library/Keychains/login.keychain-db` as the user the server runs as, then create the VM again";

/// The lines that decide: the garbage-collection warning tart prints before going on is
/// noise here.
pub fn message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Failed to perform garbage collection"))
        .filter(|l| !l.starts_with("USAGE:") && !l.starts_with("See 'tart help"))
        .collect();
    let text = lines.join(" ");
    let text = text.strip_prefix("Error: ").unwrap_or(&text).to_string();
    text.chars().take(500).collect()
}

pub fn judge(call: Call, code: Option<i32>, stderr: &str) -> HypervisorError {
    let message = message(stderr);
    let message = if message.is_empty() {
        format!(
            "exit status {}",
            code.map_or("none".into(), |c| c.to_string())
        )
    } else {
        message
    };
    if message.contains("does not exist") {
        HypervisorError::VmOpenError { call, message }
    } else if message.contains("is not running") {
        HypervisorError::NotPoweredOn { call, message }
    } else if message.ends_with("is already running!") || message.ends_with("is running") {
        HypervisorError::AlreadyRunning { call, message }
    } else if message.contains("exceeds the system limit") {
        HypervisorError::HostLimit { call, message }
    } else if message.contains("The virtual machine failed to start") {
        HypervisorError::Refused {
            code: "host-keychain-locked",
            message: format!("{call}: tart: {message:?}; {KEYCHAIN_HINT}"),
        }
    } else if code == Some(64) {
        HypervisorError::InvalidArgument {
            call,
            problem: format!("tart refused the arguments: {message}"),
        }
    } else {
        HypervisorError::Failed { call, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            tool: "tart",
            command: "run",
            vm: Some("osxb-x".into()),
        }
    }

    #[test]
    fn each_contract_error_becomes_its_type_with_tarts_words() {
        let cases: [(&str, i32, &str); 7] = [
            ("the specified VM \"a\" does not exist\n", 2, "vm-open-error"),
            ("Error: the specified VM \"a\" does not exist\n", 1, "vm-open-error"),
            ("VM \"a\" is not running\n", 2, "vm-not-powered-on"),
            ("VM \"a\" is already running!\n", 2, "vm-already-running"),
            ("VM \"a\" is running\n", 1, "vm-already-running"),
            ("The number of VMs exceeds the system limit (other running VMs: a, b)\n", 1, "host-vm-limit"),
            ("Failed to perform garbage collection: x\nError Domain=VZErrorDomain Code=1 \"The virtual machine failed to start.\"\n", 1, "host-keychain-locked"),
        ];
        for (stderr, code, want) in cases {
            let err = judge(call(), Some(code), stderr);
            assert_eq!(err.code(), want, "{stderr}");
            assert!(!err.to_string().contains("garbage"), "{err}");
        }
        let err = judge(call(), Some(1), "something new\n");
        assert_eq!(err.code(), "tart-failed");
        assert!(err.to_string().contains("something new"));
        assert!(judge(
            call(),
            Some(1),
            "Error Domain=VZErrorDomain Code=1 \"The virtual machine failed to start.\""
        )
        .to_string()
        .contains("unlock-keychain"));
    }
}
