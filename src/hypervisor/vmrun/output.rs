//! Turns what vmrun printed into results: its errors into typed errors, its answers into
//! values. Pure functions, so every quirk has a unit test.

use std::path::PathBuf;

use crate::hypervisor::{Call, HypervisorError};

/// How the process ended, as far as judging it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

const MAX_MESSAGE: usize = 500;

/// The verdict on a finished call: vmrun prints its errors as an `Error: ...` line on stdout
/// (possibly after noise such as libxml warnings) and has been seen to do so with exit code 0,
/// so that line decides whatever the exit code. The other lines of stdout and stderr (noise,
/// or the first half of a two-line error) are kept in the message in vmrun's own words.
pub(crate) fn judge(
    call: &Call,
    exit: Exit,
    stdout: &str,
    stderr: &str,
) -> Result<(), HypervisorError> {
    if let Some(message) = error_line(stdout) {
        // The lines around the `Error:` line often say more than it does (`Unable to connect
        // to host.` before `The specified version was not found`): the operator reads them
        // all. The `Error:` line alone decides what kind of failure it is.
        let others = other_lines(stdout, stderr);
        let mut text = message.to_string();
        if !others.is_empty() {
            text.push_str(&format!(" (vmrun also printed: {})", shorten(&others)));
        }
        return Err(classify(call.clone(), message, text));
    }
    if exit.code == Some(0) {
        return Ok(());
    }
    let status = match (exit.code, exit.signal) {
        (Some(code), _) => format!("vmrun exited with code {code}"),
        (None, Some(signal)) => format!("vmrun was killed by signal {signal}"),
        (None, None) => "vmrun ended abnormally".to_string(),
    };
    let detail = [stderr.trim(), stdout.trim()]
        .into_iter()
        .find(|s| !s.is_empty());
    let message = match detail {
        Some(detail) => format!("{status} without an Error line: {}", shorten(detail)),
        None => format!("{status} and printed nothing"),
    };
    Err(HypervisorError::Failed {
        call: call.clone(),
        message,
    })
}

/// The text of the first stdout line that starts with `Error:`.
pub(crate) fn error_line(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("Error:"))
        .map(str::trim)
}

/// Every non-empty line of stdout but the first `Error:` one, then stderr's, joined by ` / `.
fn other_lines(stdout: &str, stderr: &str) -> String {
    let mut skipped = false;
    let stdout_lines = stdout.lines().map(str::trim).filter(|line| {
        if !skipped && line.starts_with("Error:") {
            skipped = true;
            return false;
        }
        !line.is_empty()
    });
    let stderr_lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    stdout_lines
        .chain(stderr_lines)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The error an `Error:` line `line` names, carrying `message` (the line and what else
/// vmrun printed).
fn classify(call: Call, line: &str, message: String) -> HypervisorError {
    // `already in use` first: a locked VM can also be reported as `Cannot open VM: ..., The
    // file is already in use`, and the lock is what the operator must act on.
    if line.contains("The file is already in use") {
        HypervisorError::VmLocked { call, message }
    } else if line.contains("should not be powered on") {
        HypervisorError::AlreadyRunning { call, message }
    } else if line.contains("is not powered on") {
        HypervisorError::NotPoweredOn { call, message }
    } else if line.contains("Cannot open VM")
        || line.contains("virtual machine cannot be found")
        || line.contains("Cannot read the virtual machine configuration file")
    {
        HypervisorError::VmOpenError { call, message }
    } else {
        HypervisorError::Failed { call, message }
    }
}

/// vmrun's answers while the guest has not started VMware Tools yet or they have no address
/// (`The VMware Tools are not running in the virtual machine: VMX`, `VMware Tools are not
/// running in the guest`, Workstation's `Unable to get the IP address`): not a failure.
pub(crate) fn is_tools_not_running(err: &HypervisorError) -> bool {
    matches!(err, HypervisorError::Failed { message, .. }
        if message.contains("VMware Tools are not running")
            || message.contains("Unable to get the IP address"))
}

/// `clone` naming a snapshot the parent no longer has (`Invalid snapshot name 'NAME'`).
pub fn is_invalid_snapshot(err: &HypervisorError) -> bool {
    matches!(err, HypervisorError::Failed { message, .. } if message.contains("Invalid snapshot name"))
}

/// `snapshot` naming one the VM has (`A snapshot with the name already exists`; the
/// wording is unconfirmed, so any line saying a snapshot already exists counts).
pub fn is_snapshot_exists(err: &HypervisorError) -> bool {
    matches!(err, HypervisorError::Failed { message, .. } if {
        let message = message.to_ascii_lowercase();
        message.contains("snapshot") && message.contains("already exists")
    })
}

/// What products without linked clones (Fusion non-Pro, Player) answer a linked `clone`.
pub fn is_invalid_parameters(err: &HypervisorError) -> bool {
    matches!(err, HypervisorError::Failed { message, .. }
        if message.contains("One of the parameters was invalid"))
}

/// The lines of an answer, without the noise vmrun on Linux may print first and without
/// trailing blank lines.
fn answer_lines(stdout: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = stdout
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.trim().is_empty() || l.starts_with("Warning:"))
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// `Total running VMs: N` then exactly N absolute VMX paths.
pub(crate) fn parse_list(stdout: &str) -> Result<Vec<PathBuf>, String> {
    counted_lines(stdout, "Total running VMs:")?
        .into_iter()
        .map(|line| {
            if line.starts_with('/') {
                Ok(PathBuf::from(line))
            } else {
                Err(format!("{line:?} is not an absolute VMX path"))
            }
        })
        .collect()
}

/// `Total snapshots: N` then exactly N names.
pub(crate) fn parse_snapshots(stdout: &str) -> Result<Vec<String>, String> {
    Ok(counted_lines(stdout, "Total snapshots:")?
        .into_iter()
        .map(str::to_string)
        .collect())
}

fn counted_lines<'a>(stdout: &'a str, header: &str) -> Result<Vec<&'a str>, String> {
    let lines = answer_lines(stdout);
    // Any line before the header is noise (Fusion's `2017-11-29T00:22:40.719|
    // ServiceImpl_Opener: PID 77422`, libxml warnings); the header starts the answer.
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(header))
        .unwrap_or(0);
    let Some((first, items)) = lines[start..].split_first() else {
        return Err(format!("no {header:?} line"));
    };
    let count: usize = first
        .strip_prefix(header)
        .map(str::trim)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected {header:?} and a number, got {first:?}"))?;
    if items.len() != count || items.iter().any(|l| l.trim().is_empty()) {
        return Err(format!(
            "the header announces {count} lines but {} follow",
            items.iter().filter(|l| !l.trim().is_empty()).count()
        ));
    }
    Ok(items.to_vec())
}

/// `getGuestIPAddress`: one line after any noise, as vmrun printed it (an address, usable or
/// not, or a hostname: `guest_ip` judges it), or `None` for `unknown` (Tools run but have no
/// address yet). Several lines, or a line no address or hostname looks like, is not an answer.
pub(crate) fn parse_ip(stdout: &str) -> Result<Option<String>, String> {
    let plausible = |line: &&str| {
        !line.is_empty()
            && line
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '%' | '_'))
    };
    // Noise (Fusion's `2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422`) has spaces
    // or `|`, which no address or host name has: the one plausible line is the answer.
    let lines = answer_lines(stdout);
    let answers: Vec<&str> = lines.iter().map(|l| l.trim()).filter(plausible).collect();
    match answers.as_slice() {
        ["unknown"] => Ok(None),
        [answer] => Ok(Some(answer.to_string())),
        [] => Err(format!(
            "no line looks like an IP address or a host name (got {} lines)",
            lines.iter().filter(|l| !l.trim().is_empty()).count()
        )),
        several => Err(format!("expected one answer, got {}", several.len())),
    }
}

/// What `checkToolsState` reports about VMware Tools in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolsState {
    Running,
    Installed,
    Unknown,
}

impl ToolsState {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolsState::Running => "running",
            ToolsState::Installed => "installed",
            ToolsState::Unknown => "unknown",
        }
    }
}

pub(crate) fn parse_tools_state(stdout: &str) -> Result<ToolsState, String> {
    let lines = answer_lines(stdout);
    match lines
        .as_slice()
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()[..]
    {
        ["running"] => Ok(ToolsState::Running),
        ["installed"] => Ok(ToolsState::Installed),
        ["unknown"] => Ok(ToolsState::Unknown),
        _ => Err("expected one of running, installed, unknown".to_string()),
    }
}

pub(crate) fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(MAX_MESSAGE).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            tool: "vmrun",
            command: "start",
            vm: Some(PathBuf::from("/vms/a/a.vmx")),
        }
    }

    const OK: Exit = Exit {
        code: Some(0),
        signal: None,
    };
    const FAILED: Exit = Exit {
        code: Some(255),
        signal: None,
    };

    #[test]
    fn errors_are_typed_by_vmruns_message() {
        let cases = [
            ("Error: The file is already in use\n", "vm-locked"),
            (
                "Error: Cannot open VM: /vms/a/a.vmx, The file is already in use\n",
                "vm-locked",
            ),
            (
                "Error: Cannot open VM: /vms/a/a.vmx, The virtual machine cannot be found\n",
                "vm-open-error",
            ),
            (
                "Error: Cannot open VM: /vms/a/a.vmx, Cannot read the virtual machine configuration file\n",
                "vm-open-error",
            ),
            (
                "Error: The virtual machine is not powered on: /vms/a/a.vmx\n",
                "vm-not-powered-on",
            ),
            (
                "Error: The virtual machine should not be powered on. It is already running.\n",
                "vm-already-running",
            ),
            ("Error: Unknown error\n", "vmrun-failed"),
            ("Error: The operation was canceled\n", "vmrun-failed"),
        ];
        for (stdout, code) in cases {
            let err = judge(&call(), FAILED, stdout, "").unwrap_err();
            assert_eq!(err.code(), code, "{stdout}");
            // vmrun's own words and the call reach the message.
            let expected = stdout.trim().trim_start_matches("Error: ");
            assert_eq!(err.vmrun_message(), Some(expected));
            assert!(
                err.to_string().contains("vmrun start /vms/a/a.vmx"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_error_line_is_found_after_noise_and_the_other_lines_are_kept() {
        let stdout = "Warning: program compiled against libxml 212 using older 209\n\
                      Error: The file is already in use\n";
        let stderr = "[AppLoader] Use shipped Linux kernel AIO access library.\n";
        let err = judge(&call(), FAILED, stdout, stderr).unwrap_err();
        assert_eq!(err.code(), "vm-locked");
        assert_eq!(
            err.vmrun_message(),
            Some(
                "The file is already in use (vmrun also printed: Warning: program compiled \
                 against libxml 212 using older 209 / [AppLoader] Use shipped Linux kernel AIO \
                 access library.)"
            )
        );
    }

    #[test]
    fn multi_line_errors_keep_every_line() {
        let cases = [
            (
                "Unable to connect to host.\nError: Service type VIX_SERVICEPROVIDER_VMWARE_WORKSTATION was specified, but not installed\n",
                "",
                "Service type VIX_SERVICEPROVIDER_VMWARE_WORKSTATION was specified, but not installed (vmrun also printed: Unable to connect to host.)",
            ),
            (
                "Invalid host type 'player' specified\nError: The operation is not supported\n",
                "",
                "The operation is not supported (vmrun also printed: Invalid host type 'player' specified)",
            ),
            (
                "2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422\nError: Unknown error\n",
                "Unexpected signal: 11.\n",
                "Unknown error (vmrun also printed: 2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422 / Unexpected signal: 11.)",
            ),
        ];
        for (stdout, stderr, want) in cases {
            let err = judge(&call(), FAILED, stdout, stderr).unwrap_err();
            assert_eq!(err.code(), "vmrun-failed");
            assert_eq!(err.vmrun_message(), Some(want));
        }
        // A clone that printed VixDiskLib lines and exited 0 succeeded.
        let vix = "VixDiskLib: Invalid configuration file parameter.  Failed to read configuration file.\n";
        assert!(judge(&call(), OK, &vix.repeat(3), "").is_ok());
    }

    #[test]
    fn noise_before_a_listing_header_is_skipped() {
        let stamp = "2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422\n";
        assert_eq!(
            parse_list(&format!("{stamp}Total running VMs: 1\n/vms/a/a.vmx\n")),
            Ok(vec![PathBuf::from("/vms/a/a.vmx")])
        );
        assert_eq!(
            parse_snapshots(&format!("{stamp}Total snapshots: 1\nosx-builder-base\n")),
            Ok(vec!["osx-builder-base".to_string()])
        );
    }

    #[test]
    fn an_error_line_with_exit_zero_is_a_failure() {
        let err = judge(&call(), OK, "Error: Unknown error\n", "").unwrap_err();
        assert_eq!(err.code(), "vmrun-failed");
        assert_eq!(err.vmrun_message(), Some("Unknown error"));
    }

    #[test]
    fn crlf_output_is_understood() {
        let err = judge(&call(), FAILED, "Error: The file is already in use\r\n", "").unwrap_err();
        assert_eq!(err.vmrun_message(), Some("The file is already in use"));
        assert_eq!(parse_ip("10.0.0.7\r\n"), Ok(Some("10.0.0.7".into())));
    }

    #[test]
    fn a_silent_nonzero_exit_is_a_failure_naming_the_code_and_output() {
        let err = judge(&call(), FAILED, "", "  something broke \n").unwrap_err();
        assert_eq!(err.code(), "vmrun-failed");
        let message = err.vmrun_message().unwrap();
        assert!(message.contains("code 255"), "{message}");
        assert!(message.contains("something broke"), "{message}");

        let err = judge(
            &call(),
            Exit {
                code: Some(3),
                signal: None,
            },
            "odd\n",
            "",
        )
        .unwrap_err();
        assert!(err.vmrun_message().unwrap().contains("code 3"));
        assert!(err.vmrun_message().unwrap().contains("odd"));

        let err = judge(
            &call(),
            Exit {
                code: None,
                signal: Some(9),
            },
            "",
            "",
        )
        .unwrap_err();
        assert!(err.vmrun_message().unwrap().contains("signal 9"));
    }

    #[test]
    fn exit_zero_without_an_error_line_is_success() {
        assert!(judge(&call(), OK, "", "").is_ok());
        assert!(judge(&call(), OK, "", "[AppLoader] noise\n").is_ok());
        // `Error:` only counts at the start of a line.
        assert!(judge(&call(), OK, "Total snapshots: 1\nNo Error: here\n", "").is_ok());
    }

    #[test]
    fn list_output_is_parsed_strictly() {
        let good = [
            ("Total running VMs: 0\n", vec![]),
            ("Total running VMs: 0", vec![]),
            (
                "Total running VMs: 2\n/vms/a/a.vmx\n/Users/ci/Virtual Machines/b b.vmx\n",
                vec!["/vms/a/a.vmx", "/Users/ci/Virtual Machines/b b.vmx"],
            ),
            (
                "Warning: program compiled against libxml 212\nTotal running VMs: 1\n/vms/a/a.vmx\n\n",
                vec!["/vms/a/a.vmx"],
            ),
            ("Total running VMs: 1\r\n/vms/a/a.vmx\r\n", vec!["/vms/a/a.vmx"]),
        ];
        for (stdout, want) in good {
            let got = parse_list(stdout).unwrap_or_else(|e| panic!("{stdout:?}: {e}"));
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{stdout:?}");
        }
        let bad = [
            "",
            "\n",
            "Running VMs: 1\n/vms/a/a.vmx\n",
            "Total running VMs: x\n",
            "Total running VMs: 2\n/vms/a/a.vmx\n",
            "Total running VMs: 1\n/vms/a/a.vmx\n/vms/b/b.vmx\n",
            "Total running VMs: 2\n/vms/a/a.vmx\n\n/vms/b/b.vmx\n",
            "Total running VMs: 1\nrelative.vmx\n",
            "Total running VMs: -1\n",
        ];
        for stdout in bad {
            assert!(parse_list(stdout).is_err(), "{stdout:?}");
        }
    }

    #[test]
    fn snapshot_lists_are_parsed_strictly() {
        assert_eq!(parse_snapshots("Total snapshots: 0\n"), Ok(vec![]));
        assert_eq!(
            parse_snapshots("Total snapshots: 2\nosx-builder-base\nmy snap\n"),
            Ok(vec!["osx-builder-base".to_string(), "my snap".to_string()])
        );
        assert!(parse_snapshots("Total snapshots: 2\nonly-one\n").is_err());
        assert!(parse_snapshots("Snapshots: 0\n").is_err());
    }

    #[test]
    fn ip_answers() {
        // Whether an answer is a usable address is `guest_ip`'s call, not the parser's.
        let cases: [(&str, Result<Option<&str>, ()>); 10] = [
            ("192.168.123.147\n", Ok(Some("192.168.123.147"))),
            ("  10.0.0.2  \n", Ok(Some("10.0.0.2"))),
            ("fe80::1%en0\n", Ok(Some("fe80::1%en0"))),
            ("unknown\n", Ok(None)),
            ("Warning: libxml\n10.1.1.1\n", Ok(Some("10.1.1.1"))),
            ("", Err(())),
            ("build-mac.local\n", Ok(Some("build-mac.local"))),
            ("10.0.0.1 10.0.0.2\n", Err(())),
            ("10.0.0.1\n10.0.0.2\n", Err(())),
            ("\u{1b}[0m%%#\n", Err(())),
        ];
        assert_eq!(
            parse_ip("2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422\n10.0.0.7\n"),
            Ok(Some("10.0.0.7".into()))
        );
        for (stdout, want) in cases {
            let got = parse_ip(stdout).map_err(|_| ());
            assert_eq!(got, want.map(|o| o.map(str::to_string)), "{stdout:?}");
        }
    }

    #[test]
    fn tools_not_running_is_recognised() {
        let err = judge(
            &call(),
            FAILED,
            "Error: The VMware Tools are not running in the virtual machine: /vms/a/a.vmx\n",
            "",
        )
        .unwrap_err();
        assert!(is_tools_not_running(&err));
        for stdout in [
            "Error: VMware Tools are not running in the guest\n",
            "Error: Unable to get the IP address\n",
        ] {
            assert!(is_tools_not_running(
                &judge(&call(), FAILED, stdout, "").unwrap_err()
            ));
        }
        let other = judge(&call(), FAILED, "Error: Unknown error\n", "").unwrap_err();
        assert!(!is_tools_not_running(&other));
    }

    #[test]
    fn tools_states() {
        assert_eq!(parse_tools_state("running\n"), Ok(ToolsState::Running));
        assert_eq!(parse_tools_state("installed\n"), Ok(ToolsState::Installed));
        assert_eq!(parse_tools_state("unknown\n"), Ok(ToolsState::Unknown));
        assert!(parse_tools_state("").is_err());
        assert!(parse_tools_state("sleeping\n").is_err());
    }
}
