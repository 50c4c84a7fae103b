//! Running commands with clear reporting.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// A command to run, with a human name for messages.
pub(crate) struct Step {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    envs: Vec<(OsString, OsString)>,
}

impl Step {
    pub(crate) fn new(name: &str, program: impl Into<OsString>) -> Self {
        Step { name: name.into(), program: program.into(), args: Vec::new(), dir: None, envs: Vec::new() }
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn arg_path(mut self, path: &Path) -> Self {
        self.args.push(path.as_os_str().to_owned());
        self
    }

    pub(crate) fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub(crate) fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }
}

/// Runs a step, inheriting stdio; an error names the step and the exit status.
pub(crate) fn run(step: Step) -> Result<(), String> {
    let shown: Vec<String> = std::iter::once(step.program.to_string_lossy().into_owned())
        .chain(step.args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    eprintln!("\n== {}: {}", step.name, shown.join(" "));
    let mut cmd = Command::new(&step.program);
    cmd.args(&step.args);
    if let Some(dir) = &step.dir {
        cmd.current_dir(dir);
    }
    for (k, v) in &step.envs {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("{}: could not start {:?}: {e}", step.name, step.program))?;
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", step.name)) }
}

/// A fenced code block of a Markdown file: the words after the language on its opening line, its text, and the
/// line (1-based) of its opening fence.
pub(crate) struct FencedBlock {
    pub(crate) info: String,
    pub(crate) body: String,
    pub(crate) line: usize,
}

/// Every block of `markdown` fenced with ```` ```{lang} ```` (optionally followed by words, e.g. `swift apple-only`)
/// at the start of a line, in order. An unterminated block is an error.
pub(crate) fn fenced_blocks(markdown: &str, lang: &str) -> Result<Vec<FencedBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(rest) = line.strip_prefix("```") else { continue };
        let (word, info) = rest.split_once(' ').unwrap_or((rest, ""));
        if word != lang {
            // Skip over any other block, so that its closing fence is not taken for an opening one.
            for (_, inner) in lines.by_ref() {
                if inner == "```" {
                    break;
                }
            }
            continue;
        }
        let mut body = String::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            if inner == "```" {
                closed = true;
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        if !closed {
            return Err(format!("the ```{lang} block at line {} is not closed", index + 1));
        }
        blocks.push(FencedBlock { info: info.trim().to_string(), body, line: index + 1 });
    }
    Ok(blocks)
}
