//! Where the service binaries are, built first when missing or older than
//! their sources.
//!
//! An integration test of this crate has no `CARGO_BIN_EXE_` for other
//! packages' binaries. They live next to the test executable's directory:
//! `target/<profile>/deps/<test>` → `target/<profile>/smsgate-worker`.
//! `cargo test --workspace` builds them before any test runs; `cargo test -p
//! smsgate-e2e` does not, so the first stack of a process runs `cargo build
//! --bins -p smsgate-ingress -p smsgate-worker -p smsgate-sender --features
//! fault-hooks` when a binary is missing or older than a source file of the
//! services (the `CARGO` and `CARGO_TARGET_DIR` variables are honoured as
//! cargo sets them). The worker's test hooks (cargo feature `fault-hooks`)
//! are built in as `cargo test` of the worker builds them: its crash tests
//! run the same `target/<profile>/smsgate-worker`. A release build never
//! has them.
//! `SMSGATE_E2E_BIN_DIR` points at prebuilt binaries instead (no build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};

const SERVICES: [&str; 3] = ["smsgate-ingress", "smsgate-worker", "smsgate-sender"];

/// The test-only features the binaries are built with (never in a release
/// image): the worker's environment test hooks. Unqualified, so cargo
/// enables it on each selected package that has it; `smsgate-worker/…` would
/// name the worker's dev-dependency on itself and enable nothing here.
const FEATURES: &str = "fault-hooks";

/// The directory holding the three binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }
}

/// Finds the binaries once per process (building them if needed).
pub fn locate() -> anyhow::Result<Binaries> {
    static FOUND: OnceLock<Result<Binaries, String>> = OnceLock::new();
    FOUND.get_or_init(|| find().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn find() -> anyhow::Result<Binaries> {
    if let Some(dir) = std::env::var_os("SMSGATE_E2E_BIN_DIR") {
        let bins = Binaries { dir: PathBuf::from(dir) };
        for name in SERVICES {
            if !bins.path(name).is_file() {
                bail!("SMSGATE_E2E_BIN_DIR has no {name}");
            }
        }
        return Ok(bins);
    }
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let mut dir = exe.parent().context("the test executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bins = Binaries { dir };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the e2e crate has no parent")?;
    let newest_source = newest_source(workspace);
    let stale = SERVICES.iter().any(|name| match modified(&bins.path(name)) {
        None => true,
        Some(built) => newest_source.is_some_and(|src| src > built),
    });
    if stale {
        build(workspace, &bins.dir)?;
    }
    for name in SERVICES {
        if !bins.path(name).is_file() {
            bail!("{} is missing after cargo build", bins.path(name).display());
        }
    }
    Ok(bins)
}

fn build(workspace: &Path, dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace).args(["build", "--bins"]);
    for name in SERVICES {
        cmd.args(["-p", name]);
    }
    cmd.args(["--features", FEATURES]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    eprintln!("e2e harness: building the service binaries ({cmd:?})");
    let status = cmd.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of the service binaries failed: {status}");
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the services' sources, the console's
/// files included (their tests excluded: the binaries do not run them; the
/// test kit is its own crate).
fn newest_source(workspace: &Path) -> Option<SystemTime> {
    let mut newest = modified(&workspace.join("Cargo.lock"));
    let mut dirs: Vec<PathBuf> =
        ["shared", "admin", "ingress", "worker", "sender"].iter().map(|c| workspace.join(c)).collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "tests" | "benches" | "target") {
                    dirs.push(path);
                }
            } else if [".rs", ".html", ".js", ".css"].iter().any(|ext| name.ends_with(ext)) || name == "Cargo.toml" {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}
