//! `lockfs demo`: racing writers on a temp dir, first on the bare directory, then through
//! a lockfs mount over the same directory, with the updates that survived counted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;

const NODE_WRITER: &str = include_str!("writer.js");
const PYTHON_WRITER: &str = include_str!("writer.py");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Writer processes per run.
    #[arg(long, default_value_t = 4)]
    pub writers: u32,
    /// Load-modify-save cycles per writer.
    #[arg(long, default_value_t = 50)]
    pub cycles: u32,
}

struct Writer {
    label: &'static str,
    program: &'static str,
    script: &'static str,
    file_name: &'static str,
}

const WRITERS: [Writer; 2] = [
    Writer {
        label: "Node: readFile, writeFile(tmp), rename",
        program: "node",
        script: NODE_WRITER,
        file_name: "writer.js",
    },
    Writer {
        label: "Python: json.load, NamedTemporaryFile, os.replace",
        program: "python3",
        script: PYTHON_WRITER,
        file_name: "writer.py",
    },
];

pub fn demo_command(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = Scratch::new()?;
    let state = scratch.path.join("state");
    std::fs::create_dir(&state).context("create the demo state dir")?;
    println!(
        "lockfs demo: {} processes x {} load-modify-save cycles on one JSON file, in {}",
        args.writers,
        args.cycles,
        state.display()
    );
    println!();
    println!(
        "{:<52} {:>10} {:>8} {:>8} {:>6}",
        "writers", "directory", "expected", "present", "lost"
    );
    let mut failed = false;
    for writer in WRITERS.iter().filter(|w| has_program(w.program)) {
        let script = scratch.path.join(writer.file_name);
        std::fs::write(&script, writer.script).context("write the demo writer")?;
        let native = race(writer, &script, &state, &args)?;
        print_row(writer.label, "native", &native, &args);
        let mut mount = DemoMount::mount(&state)?;
        let protected = race(writer, &script, &state, &args);
        mount.unmount()?;
        let protected = protected?;
        print_row("", "lockfs", &protected, &args);
        failed |= protected.present != expected(&args) || !protected.errors.is_empty();
        for error in native.errors.iter().chain(&protected.errors).take(3) {
            println!("    {error}");
        }
    }
    println!();
    if failed {
        println!(
            "lockfs lost updates or a writer failed: please report this with `lockfs demo -vv`."
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "The same unmodified writers lose updates on the bare directory and none through lockfs:"
    );
    println!(
        "each read-modify-save cycle held the file's lease, and the others waited their turn."
    );
    Ok(ExitCode::SUCCESS)
}

fn expected(args: &DemoArgs) -> u32 {
    args.writers * args.cycles
}

fn print_row(label: &str, dir: &str, outcome: &Outcome, args: &DemoArgs) {
    let expected = expected(args);
    println!(
        "{:<52} {:>10} {:>8} {:>8} {:>6}",
        label,
        dir,
        expected,
        outcome.present,
        expected.saturating_sub(outcome.present)
    );
}

struct Outcome {
    present: u32,
    errors: Vec<String>,
}

/// Runs the writers at once on a fresh store and counts the keys that survived.
fn race(writer: &Writer, script: &Path, state: &Path, args: &DemoArgs) -> anyhow::Result<Outcome> {
    let store = state.join("store.json");
    std::fs::write(&store, "{}").context("reset the demo store")?;
    let children: Vec<_> = (0..args.writers)
        .map(|n| {
            Command::new(writer.program)
                .arg(script)
                .arg(&store)
                .arg(format!("w{n}"))
                .arg(args.cycles.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("start {}", writer.program))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut errors = Vec::new();
    for child in children {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            errors.push(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
    }
    let text = std::fs::read_to_string(&store).context("read the demo store")?;
    let present = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
        .map(|map| map.len() as u32)
        .unwrap_or(0);
    Ok(Outcome { present, errors })
}

fn has_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The mount the demo makes with this same binary; unmounted on drop.
struct DemoMount {
    dir: PathBuf,
    mounted: bool,
}

impl DemoMount {
    fn mount(dir: &Path) -> anyhow::Result<DemoMount> {
        let status = lockfs_command()
            .arg("mount")
            .arg(dir)
            .status()
            .context("run lockfs mount")?;
        if !status.success() {
            bail!(
                "lockfs mount {} failed (see above); try `lockfs doctor`",
                dir.display()
            );
        }
        Ok(DemoMount {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    fn unmount(&mut self) -> anyhow::Result<()> {
        let status = lockfs_command().arg("unmount").arg(&self.dir).status()?;
        if !status.success() {
            bail!("lockfs unmount {} failed", self.dir.display());
        }
        self.mounted = false;
        Ok(())
    }
}

impl Drop for DemoMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = lockfs_command()
                .args([OsString::from("unmount"), OsString::from("--lazy")])
                .arg(&self.dir)
                .status();
        }
    }
}

fn lockfs_command() -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lockfs"));
    Command::new(exe)
}

/// A private temp dir, removed on drop.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let base = std::env::temp_dir().join("lockfs-demo.XXXXXX");
        let mut template =
            std::ffi::CString::new(base.as_os_str().as_encoded_bytes())?.into_bytes_with_nul();
        // SAFETY: template is a writable NUL-terminated buffer ending in XXXXXX.
        let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(std::io::Error::last_os_error()).context("create a temp dir");
        }
        template.pop();
        let path = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8(template).context("temp dir name")?,
        ));
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
