//! Regression tests for issue 14, breaks 3 and 4: the file tools listed a directory and
//! then opened its entries by path, following symlinks. Swapping a directory for a
//! symlink to the outside while a call ran leaked an outside file's digest and lines;
//! swapping a file for a FIFO left a thread blocked in its `open` for good. Here
//! another thread makes those swaps as fast as it can while the tools run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use smart_async::JobContext;
use smart_async::Roots;
use smart_async::Tool;
use smart_async::{HashFiles, SearchText};
use tokio_util::sync::CancellationToken;

/// Calls per test: a86c8a7 leaked in about half of its tries.
const CALLS: usize = 150;
/// Far longer than one call over a few files takes: reaching it means a thread is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// A root with `d/inside.txt`, and outside it `secret.txt`.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/inside.txt"), "inside line\n").unwrap();
        std::fs::write(root.join("plain.txt"), "plain line\n").unwrap();
        std::fs::write(outside.join("secret.txt"), "SECRET line\n").unwrap();
        Tree {
            _dir: dir,
            root,
            outside,
        }
    }

    fn roots(&self) -> Arc<Roots> {
        Arc::new(Roots::new(std::slice::from_ref(&self.root)).unwrap())
    }
}

/// Runs `swap` over and over on its own thread until the guard is dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(mut swap: impl FnMut() + Send + 'static) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                swap();
            }
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `root/d` becomes a symlink to the outside and back.
fn swap_dir_for_symlink(root: &Path, outside: &Path) -> impl FnMut() + Send + 'static {
    let (dir, saved, outside) = (root.join("d"), root.join(".d"), outside.to_path_buf());
    move || {
        if std::fs::rename(&dir, &saved).is_ok() {
            let _ = std::os::unix::fs::symlink(&outside, &dir);
            std::thread::yield_now();
            let _ = std::fs::remove_file(&dir);
            let _ = std::fs::rename(&saved, &dir);
        }
    }
}

async fn run(tool: &dyn Tool, args: Value) -> Result<Value, String> {
    let work = tool.start(&args)?;
    let done = tokio::time::timeout(STUCK_AFTER, work(JobContext::new(CancellationToken::new())))
        .await
        .expect("the call ends (a thread is stuck in an open)");
    done.map(|output| json!({"text": output.text, "structured": output.structured}))
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_3_a_directory_swapped_for_a_symlink_never_leaks_an_outside_file() {
    let tree = Tree::new();
    let hash = HashFiles::new(tree.roots());
    let search = SearchText::new(tree.roots());
    let _swapper = Swapper::start(swap_dir_for_symlink(&tree.root, &tree.outside));
    let mut saw_inside = 0;
    for _ in 0..CALLS {
        for path in [".", "d"] {
            for answer in [
                run(&hash, json!({ "path": path })).await,
                run(&search, json!({ "path": path, "pattern": "line" })).await,
            ] {
                // Refusing a path that is a symlink at that moment is fine; leaking is not.
                let Ok(answer) = answer else { continue };
                let shown = answer.to_string();
                assert!(
                    !shown.contains("secret") && !shown.contains("SECRET"),
                    "read outside the root: {shown}"
                );
                saw_inside += usize::from(shown.contains("inside"));
            }
        }
    }
    assert!(
        saw_inside > 0,
        "the swaps left the directory readable at times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_4_a_file_swapped_for_a_fifo_never_holds_a_thread() {
    let tree = Tree::new();
    // Files that take a while to hash, so that files listed as regular are swapped for
    // FIFOs before the walk opens them.
    let files: Vec<PathBuf> = (0..20)
        .map(|i| tree.root.join(format!("f{i:02}")))
        .collect();
    let content = vec![7u8; 1 << 20];
    for file in &files {
        std::fs::write(file, &content).unwrap();
    }
    let hash = HashFiles::new(tree.roots());
    let search = SearchText::new(tree.roots());
    let mut next = 0;
    let _swapper = Swapper::start(move || {
        let file = &files[next % files.len()];
        next += 1;
        let _ = std::fs::remove_file(file);
        let _ = std::process::Command::new("mkfifo").arg(file).status();
        std::thread::sleep(Duration::from_millis(5));
        let _ = std::fs::remove_file(file);
        let _ = std::fs::write(file, &content);
    });
    let mut refused_fifos = 0;
    for _ in 0..10 {
        // Every call ends; a FIFO met on the way is skipped or reported, never waited on.
        if let Ok(answer) = run(&hash, json!({ "path": "." })).await {
            let special = answer["structured"]["special_skipped"]
                .as_u64()
                .unwrap_or(0);
            let unreadable = answer["structured"]["unreadable_count"]
                .as_u64()
                .unwrap_or(0);
            refused_fifos += special + unreadable;
        }
        let _ = run(&search, json!({ "path": ".", "pattern": "line" })).await;
    }
    assert!(refused_fifos > 0, "the walks met the FIFOs");
}

#[tokio::test]
async fn an_unreadable_file_is_reported_and_the_rest_still_hashed() {
    // Issue 14, break 11: one unreadable file failed the whole directory. A FIFO
    // stands in for it (root reads any file, whatever its mode).
    let tree = Tree::new();
    let status = std::process::Command::new("mkfifo")
        .arg(tree.root.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let hash = HashFiles::new(tree.roots());
    let answer = run(&hash, json!({ "path": "." })).await.unwrap();
    assert_eq!(answer["structured"]["files"], 2, "{answer}");
    assert_eq!(answer["structured"]["special_skipped"], 1, "{answer}");
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("1 FIFOs, sockets or devices skipped"),
        "{text}"
    );
}
