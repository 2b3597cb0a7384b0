//! The built-in file tools, `hash_files` and `search_text`: real work whose runtime
//! grows with the files under their path, confined to the roots.
//!
//! Both run on a blocking thread and check for cancellation between files. Their
//! output is bounded, and says so when it is cut.

use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::roots::{Located, Roots};
use super::walk::{tree_size, walk, FileEntry, Skipped};
use super::{parse_args, schema_of, Tool, ToolOutput, ToolWork};
use crate::engine::ToolOptions;
use crate::features::{FeatureExtractor, FeatureKind, Features};
use crate::jobs::{JobContext, Progress};
use crate::run_error::RunError;

/// Manifest lines shown; the digest still covers every file.
pub const MAX_MANIFEST_LINES: usize = 1000;
/// How many 64 KiB chunks are hashed between cancellation checks (1 MiB).
const CANCEL_CHECK_CHUNKS: u64 = 16;
/// Matches returned when the call does not say.
pub const DEFAULT_MAX_MATCHES: u32 = 100;
/// The most matches a call may ask for.
pub const MAX_MATCHES: u32 = 1000;
/// A matching line is cut to this many chars.
pub const MAX_LINE_CHARS: usize = 240;
/// How long the feature extractor may walk a path before it stops counting.
pub const SIZE_WALK_CAP: Duration = Duration::from_millis(250);
/// How many entries the feature extractor looks at, at most.
pub const SIZE_WALK_MAX_ENTRIES: u64 = 200_000;

/// Adds `path.files` and `path.bytes` for a call's `path` argument.
pub struct PathSize {
    roots: Arc<Roots>,
}

impl FeatureExtractor for PathSize {
    fn extract(&self, args: &Value, features: &mut Features) {
        let Some(path) = args.get("path").and_then(Value::as_str) else {
            return;
        };
        let Ok(located) = self.roots.locate(path) else {
            return;
        };
        let size = tree_size(&located, SIZE_WALK_CAP, SIZE_WALK_MAX_ENTRIES);
        features.insert("path.files", size.files as f64, FeatureKind::Custom);
        features.insert("path.bytes", size.bytes as f64, FeatureKind::Custom);
    }
}

fn path_options(roots: &Arc<Roots>) -> ToolOptions {
    ToolOptions {
        expensive: false,
        extractor: Some(Arc::new(PathSize {
            roots: roots.clone(),
        })),
    }
}

/// `hash_files`: a SHA-256 manifest of every file under a directory.
pub struct HashFiles {
    roots: Arc<Roots>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HashArgs {
    /// Directory (or file) to hash, relative to the first root.
    path: String,
}

impl HashFiles {
    /// The tool over these roots.
    pub fn new(roots: Arc<Roots>) -> HashFiles {
        HashFiles { roots }
    }
}

impl Tool for HashFiles {
    fn name(&self) -> &str {
        "hash_files"
    }

    fn description(&self) -> &str {
        "SHA-256 manifest of every file under a directory (symlinks are skipped). \
         Takes time in proportion to the bytes under the path; smart-async answers inline \
         or returns a job id, as its learned prediction says."
    }

    fn input_schema(&self) -> serde_json::Map<String, Value> {
        schema_of::<HashArgs>()
    }

    fn options(&self) -> ToolOptions {
        path_options(&self.roots)
    }

    fn start(&self, args: &Value) -> Result<ToolWork, String> {
        let args: HashArgs = parse_args(self.name(), args)?;
        let root = self.roots.locate(&args.path)?;
        Ok(Box::new(move |ctx: JobContext| {
            Box::pin(async move {
                tokio::task::spawn_blocking(move || hash_tree(&root, &ctx))
                    .await
                    .map_err(|e| format!("hashing stopped: {e}"))?
            })
        }))
    }
}

/// How many regular files a walk of `located` finds, for progress reports.
fn count_files(located: &Located) -> u64 {
    let mut files = 0;
    let _ = walk(located, |_| {
        files += 1;
        ControlFlow::Continue(())
    });
    files
}

/// What a walk could not read, as the result's text and structured content say it.
fn report_skipped(skipped: &Skipped, text: &mut String) -> Value {
    if skipped.symlinks > 0 {
        text.push_str(&format!("{} symlinks skipped\n", skipped.symlinks));
    }
    if skipped.special > 0 {
        text.push_str(&format!(
            "{} FIFOs, sockets or devices skipped\n",
            skipped.special
        ));
    }
    for (path, why) in skipped.unreadable.iter().take(MAX_UNREADABLE_SHOWN) {
        text.push_str(&format!("could not read {path}: {why}\n"));
    }
    if skipped.unreadable.len() > MAX_UNREADABLE_SHOWN {
        text.push_str(&format!(
            "… and {} more that could not be read\n",
            skipped.unreadable.len() - MAX_UNREADABLE_SHOWN
        ));
    }
    json!(skipped
        .unreadable
        .iter()
        .take(MAX_UNREADABLE_SHOWN)
        .map(|(path, error)| json!({"path": path, "error": error}))
        .collect::<Vec<_>>())
}

/// Unreadable entries listed in a result; the count covers all of them.
const MAX_UNREADABLE_SHOWN: usize = 100;

fn hash_tree(located: &Located, ctx: &JobContext) -> Result<ToolOutput, RunError> {
    let root = &located.path;
    let total = count_files(located);
    let mut manifest = Sha256::new();
    let mut entries = Vec::with_capacity((total as usize).min(MAX_MANIFEST_LINES));
    let mut hashed = 0u64;
    let mut bytes = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut unreadable = Vec::new();
    let mut cancelled = false;
    let mut skipped = walk(located, |file| {
        if ctx.is_cancelled() {
            cancelled = true;
            return ControlFlow::Break(());
        }
        let relative = file.relative.display().to_string();
        let digest = match hash_file(file, &mut buffer, ctx) {
            Ok(Some((digest, n))) => {
                bytes += n;
                digest
            }
            Ok(None) => {
                cancelled = true;
                return ControlFlow::Break(());
            }
            Err(e) => {
                unreadable.push((relative, e.to_string()));
                return ControlFlow::Continue(());
            }
        };
        hashed += 1;
        manifest.update(format!("{digest}  {relative}\n"));
        if entries.len() < MAX_MANIFEST_LINES {
            entries.push((digest, relative));
        }
        ctx.report_progress(Progress {
            done: hashed as f64,
            total: Some(total.max(hashed) as f64),
            message: Some(format!("{hashed} of {} files hashed", total.max(hashed))),
        });
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if cancelled {
        return Err(RunError::Cancelled);
    }
    skipped.unreadable.extend(unreadable);
    let digest = hex(&manifest.finalize());
    let truncated = hashed as usize > entries.len();
    let mut text = format!(
        "{hashed} files, {bytes} bytes under {}; manifest digest {digest}\n",
        root.display()
    );
    for (hash, path) in &entries {
        text.push_str(&format!("{hash}  {path}\n"));
    }
    if truncated {
        text.push_str(&format!(
            "… {} more files not shown (the digest covers all of them)\n",
            hashed as usize - entries.len()
        ));
    }
    let unreadable = report_skipped(&skipped, &mut text);
    let structured = json!({
        "path": root.display().to_string(),
        "files": hashed,
        "bytes": bytes,
        "digest": digest,
        "entries": entries.iter().map(|(sha256, path)| json!({"path": path, "sha256": sha256})).collect::<Vec<_>>(),
        "truncated": truncated,
        "symlinks_skipped": skipped.symlinks,
        "special_skipped": skipped.special,
        "unreadable": unreadable,
        "unreadable_count": skipped.unreadable.len(),
    });
    Ok(ToolOutput { text, structured })
}

/// The SHA-256 of one file and its length; `None` when cancelled part way.
fn hash_file(
    file: &FileEntry<'_>,
    buffer: &mut [u8],
    ctx: &JobContext,
) -> std::io::Result<Option<(String, u64)>> {
    let mut reader = file.open()?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    for chunk in 0u64.. {
        // Between chunks too: one large file must not hold a cancel back.
        if chunk % CANCEL_CHECK_CHUNKS == CANCEL_CHECK_CHUNKS - 1 && ctx.is_cancelled() {
            return Ok(None);
        }
        let n = reader.read(buffer)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok(Some((hex(&hasher.finalize()), bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `search_text`: a regex search over the files under a path.
pub struct SearchText {
    roots: Arc<Roots>,
}

impl SearchText {
    /// The tool over these roots.
    pub fn new(roots: Arc<Roots>) -> SearchText {
        SearchText { roots }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    /// Directory (or file) to search, relative to the first root.
    path: String,
    /// Regular expression (Rust regex syntax), matched per line.
    pattern: String,
    /// Stop after this many matches (default 100, at most 1000).
    max_matches: Option<u32>,
}

impl Tool for SearchText {
    fn name(&self) -> &str {
        "search_text"
    }

    fn description(&self) -> &str {
        "Regex search, line by line, over the text files under a path (binary files and \
         symlinks are skipped). Returns file, line number and line for each match."
    }

    fn input_schema(&self) -> serde_json::Map<String, Value> {
        schema_of::<SearchArgs>()
    }

    fn options(&self) -> ToolOptions {
        path_options(&self.roots)
    }

    fn start(&self, args: &Value) -> Result<ToolWork, String> {
        let args: SearchArgs = parse_args(self.name(), args)?;
        let root = self.roots.locate(&args.path)?;
        let regex = compile_pattern(&args.pattern)?;
        let max_matches = args.max_matches.unwrap_or(DEFAULT_MAX_MATCHES);
        if max_matches == 0 || max_matches > MAX_MATCHES {
            return Err(format!(
                "max_matches must be between 1 and {MAX_MATCHES}, got {max_matches}"
            ));
        }
        Ok(Box::new(move |ctx: JobContext| {
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    search_tree(&root, &regex, max_matches as usize, &ctx)
                })
                .await
                .map_err(|e| format!("search stopped: {e}"))?
            })
        }))
    }
}

/// The longest pattern `search_text` compiles: far past any search a person or a
/// model writes, far below what makes parsing it cost memory (a 10 MB pattern took
/// the process to 1.1 GB before it was refused).
pub const MAX_PATTERN_BYTES: usize = 8 * 1024;
/// The most memory a compiled pattern may take.
const MAX_COMPILED_PATTERN_BYTES: usize = 1 << 20;
/// How deeply a pattern may nest groups and repetitions.
const MAX_PATTERN_NESTING: u32 = 64;
/// The most of the regex crate's own message quoted back (it quotes the pattern).
const MAX_PATTERN_ERROR_CHARS: usize = 400;

/// Compiles a search pattern within bounds on its size before and after compiling,
/// with a short error (issue 14, break 9).
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "pattern is {} bytes long, more than the {MAX_PATTERN_BYTES} allowed: search for a shorter pattern",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(MAX_COMPILED_PATTERN_BYTES)
        .dfa_size_limit(MAX_COMPILED_PATTERN_BYTES)
        .nest_limit(MAX_PATTERN_NESTING)
        .build()
        .map_err(|e| {
            let short = crate::jsonrpc::cut(&e.to_string(), MAX_PATTERN_ERROR_CHARS);
            format!("pattern is not a valid regex, or too large once compiled: {short}")
        })
}

fn search_tree(
    located: &Located,
    regex: &Regex,
    max_matches: usize,
    ctx: &JobContext,
) -> Result<ToolOutput, RunError> {
    let root = &located.path;
    let mut matches = Vec::new();
    let mut searched = 0usize;
    let mut truncated = false;
    let mut cancelled = false;
    let mut unreadable = Vec::new();
    let mut binary = 0usize;
    let mut not_utf8 = 0usize;
    let mut skipped = walk(located, |file| {
        if ctx.is_cancelled() {
            cancelled = true;
            return ControlFlow::Break(());
        }
        let relative = file.relative.display().to_string();
        let handle = match file.open() {
            Ok(handle) => handle,
            Err(e) => {
                unreadable.push((relative, e.to_string()));
                return ControlFlow::Continue(());
            }
        };
        let mut reader = BufReader::new(handle);
        match reader.fill_buf() {
            Ok(head) if head.contains(&0) => {
                binary += 1;
                return ControlFlow::Continue(());
            }
            Ok(_) => {}
            Err(e) => {
                unreadable.push((relative, e.to_string()));
                return ControlFlow::Continue(());
            }
        }
        searched += 1;
        let mut line = Vec::new();
        let mut lossy = false;
        for number in 1.. {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    unreadable.push((relative.clone(), e.to_string()));
                    break;
                }
            }
            let ends = if line.ends_with(b"\r\n") {
                2
            } else {
                usize::from(line.ends_with(b"\n"))
            };
            let bytes = &line[..line.len() - ends];
            // A line that is not UTF-8 is searched as decoded with replacement
            // characters, and the file counted: the rest of the file is still searched.
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => {
                    lossy = true;
                    String::from_utf8_lossy(bytes)
                }
            };
            if regex.is_match(&text) {
                if matches.len() == max_matches {
                    truncated = true;
                    not_utf8 += usize::from(lossy);
                    return ControlFlow::Break(());
                }
                let text: String = text.chars().take(MAX_LINE_CHARS).collect();
                matches.push(json!({"path": relative, "line": number, "text": text}));
            }
        }
        not_utf8 += usize::from(lossy);
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if cancelled {
        return Err(RunError::Cancelled);
    }
    skipped.unreadable.extend(unreadable);
    let mut text = format!(
        "{} matches in {searched} files under {}{}\n",
        matches.len(),
        root.display(),
        if truncated {
            format!(" (stopped at max_matches={max_matches})")
        } else {
            String::new()
        }
    );
    for m in &matches {
        text.push_str(&format!(
            "{}:{}: {}\n",
            m["path"].as_str().unwrap_or(""),
            m["line"],
            m["text"].as_str().unwrap_or("")
        ));
    }
    if binary > 0 {
        text.push_str(&format!("{binary} binary files skipped\n"));
    }
    if not_utf8 > 0 {
        text.push_str(&format!(
            "{not_utf8} files have lines that are not UTF-8: searched with those bytes shown as U+FFFD\n"
        ));
    }
    let unreadable = report_skipped(&skipped, &mut text);
    let structured = json!({
        "path": root.display().to_string(),
        "files_searched": searched,
        "binary_skipped": binary,
        "not_utf8_files": not_utf8,
        "matches": matches,
        "truncated": truncated,
        "unreadable": unreadable,
        "unreadable_count": skipped.unreadable.len(),
    });
    Ok(ToolOutput { text, structured })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn setup() -> (tempfile::TempDir, Arc<Roots>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "fn main() {}\n// TODO: one\n").unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "// TODO: two\nlet x = 1;\n").unwrap();
        std::fs::write(dir.path().join("src/bin.dat"), [0u8, 1, 2, 84, 79, 68, 79]).unwrap();
        let roots = Arc::new(Roots::new(&[dir.path().to_path_buf()]).unwrap());
        (dir, roots)
    }

    /// Runs `tool`; an error in words, whether its arguments or its run failed.
    async fn run(tool: &dyn Tool, args: Value) -> Result<ToolOutput, String> {
        let work = tool.start(&args)?;
        work(JobContext::new(CancellationToken::new()))
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn hash_files_lists_every_file_with_its_sha256() {
        let (_dir, roots) = setup();
        let out = run(&HashFiles::new(roots), json!({"path": "src"}))
            .await
            .unwrap();
        assert_eq!(out.structured["files"], 3);
        assert_eq!(out.structured["entries"][0]["path"], "a.rs");
        // sha256("fn main() {}\n// TODO: one\n")
        let expected = hex(&Sha256::digest(b"fn main() {}\n// TODO: one\n"));
        assert_eq!(out.structured["entries"][0]["sha256"], expected.as_str());
        assert!(
            out.text.contains(&format!("{expected}  a.rs")),
            "{}",
            out.text
        );
    }

    #[tokio::test]
    async fn search_text_finds_lines_and_skips_binary_files() {
        let (_dir, roots) = setup();
        let out = run(
            &SearchText::new(roots.clone()),
            json!({"path": ".", "pattern": "TODO: \\w+"}),
        )
        .await
        .unwrap();
        assert_eq!(out.structured["matches"].as_array().unwrap().len(), 2);
        assert_eq!(out.structured["files_searched"], 2);
        assert_eq!(out.structured["binary_skipped"], 1);
        assert!(out.text.contains("1 binary files skipped"), "{}", out.text);
        assert!(
            out.text.contains("src/b.rs:1: // TODO: two"),
            "{}",
            out.text
        );
        let capped = run(
            &SearchText::new(roots),
            json!({"path": ".", "pattern": "TODO", "max_matches": 1}),
        )
        .await
        .unwrap();
        assert_eq!(capped.structured["truncated"], true);
        assert!(
            capped.text.contains("stopped at max_matches=1"),
            "{}",
            capped.text
        );
    }

    /// Issue 15: the search of a file stopped at its first line that was not UTF-8.
    #[tokio::test]
    async fn search_text_goes_on_past_a_line_that_is_not_utf8_and_says_so() {
        let (dir, roots) = setup();
        std::fs::write(
            dir.path().join("src/latin1.txt"),
            b"caf\xe9 TODO: three\r\nTODO: four\n",
        )
        .unwrap();
        let out = run(
            &SearchText::new(roots),
            json!({"path": ".", "pattern": "TODO: \\w+"}),
        )
        .await
        .unwrap();
        let texts: Vec<&str> = out.structured["matches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["path"] == "src/latin1.txt")
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["caf\u{FFFD} TODO: three", "TODO: four"]);
        assert_eq!(out.structured["not_utf8_files"], 1);
        assert!(
            out.text.contains("1 files have lines that are not UTF-8"),
            "{}",
            out.text
        );
    }

    #[test]
    fn break_9_a_huge_or_deeply_nested_pattern_is_refused_short_before_compiling() {
        let huge = "a".repeat(10 << 20);
        let err = compile_pattern(&huge).unwrap_err();
        assert!(err.contains("more than the 8192 allowed"), "{err}");
        assert!(err.len() < 200, "{}", err.len());
        let nested = format!("{}a{}", "(".repeat(2000), ")".repeat(2000));
        let err = compile_pattern(&nested[..MAX_PATTERN_BYTES.min(nested.len())]).unwrap_err();
        assert!(err.len() < 600, "{}", err.len());
        let blowup = "\\w{100}{100}";
        let err = compile_pattern(blowup).unwrap_err();
        assert!(err.contains("too large once compiled"), "{err}");
        assert!(compile_pattern("TODO|FIXME").is_ok());
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_runs() {
        let (_dir, roots) = setup();
        let search = SearchText::new(roots.clone());
        let err = search
            .start(&json!({"path": ".", "pattern": "("}))
            .err()
            .unwrap();
        assert!(err.contains("pattern is not a valid regex"), "{err}");
        let err = search
            .start(&json!({"path": ".", "pattern": "x", "max_matches": 0}))
            .err()
            .unwrap();
        assert!(err.contains("between 1 and 1000"), "{err}");
        let err = HashFiles::new(roots.clone())
            .start(&json!({"path": "../.."}))
            .err()
            .unwrap();
        assert!(err.contains("outside the allowed roots"), "{err}");
        let err = HashFiles::new(roots)
            .start(&json!({"dir": "src"}))
            .err()
            .unwrap();
        assert!(err.contains("hash_files"), "{err}");
    }

    #[test]
    fn the_extractor_adds_file_count_and_bytes() {
        let (_dir, roots) = setup();
        let mut features = Features::from_args(&json!({"path": "src"}));
        PathSize { roots }.extract(&json!({"path": "src"}), &mut features);
        assert_eq!(features.get("path.files"), Some(3.0));
        let bytes: u64 = ["a.rs", "b.rs", "bin.dat"]
            .iter()
            .map(|f| {
                std::fs::metadata(_dir.path().join("src").join(f))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(features.get("path.bytes"), Some(bytes as f64));
    }

    #[tokio::test]
    async fn hashing_stops_when_cancelled() {
        let (_dir, roots) = setup();
        let work = HashFiles::new(roots)
            .start(&json!({"path": "src"}))
            .unwrap();
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(
            work(JobContext::new(token)).await.unwrap_err(),
            RunError::Cancelled
        );
    }

    #[tokio::test]
    async fn hashing_reports_files_done_of_total() {
        let (_dir, roots) = setup();
        let work = HashFiles::new(roots)
            .start(&json!({"path": "src"}))
            .unwrap();
        let ctx = JobContext::new(CancellationToken::new());
        let watched = ctx.signals().clone();
        let output = work(ctx).await.unwrap();
        let files = output.structured["files"].as_f64().unwrap();
        let last = watched.progress().expect("progress was reported");
        assert_eq!(last.total, Some(files));
        assert_eq!(last.done, files, "reported after each file");
        assert!(last.to_string().contains("files hashed"), "{last}");
    }
}
