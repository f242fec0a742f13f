//! The Python client (`python/`) against the real binary: its own `unittest` suite starts
//! `modalbench serve` on a free port, trains `bert-tiny` for an epoch through the client and
//! checks what the client reads (run, metrics, leaderboard, predictions, errors) against the
//! service's raw JSON answers.

use crate::helpers::python;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The suite's test that trains a run through the client; it must have run, not been skipped.
const CORE_TEST: &str = "test_a_run_submitted_through_the_client_trains_to_success";

#[test]
fn the_python_client_passes_its_tests_against_a_live_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // the package from the work tree, whether or not `pip install ./python` put it in .venv
    let mut pythonpath = OsString::from(root.join("python"));
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        pythonpath.push(":");
        pythonpath.push(existing);
    }
    let out = Command::new(python())
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-v"])
        .current_dir(root)
        .env("MODALBENCH_BIN", env!("CARGO_BIN_EXE_modalbench"))
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("starting the test Python");
    // unittest reports on stderr
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the Python client's tests failed ({}); `scripts/setup.sh --test` installs what they \
         need (./python with requests):\n{report}",
        out.status
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(CORE_TEST) && l.ends_with("... ok")),
        "{CORE_TEST} did not run and pass:\n{report}"
    );
}
