//! Progress from a command's output: each line (stdout or stderr) is matched against
//! the tool's progress regex and a match is reported to the job as it comes.

use regex::Regex;

use crate::jobs::{JobContext, Progress};

/// The longest output line looked at for progress; longer ones are cut.
const MAX_PROGRESS_LINE: usize = 4096;
/// The longest progress message kept from a line.
const MAX_PROGRESS_MESSAGE: usize = 200;

/// Reads a command's output lines for progress reports (see
/// [`CommandSpec::progress`](super::CommandSpec::progress)).
#[derive(Debug, Clone)]
pub(super) struct ProgressLines {
    regex: Regex,
    ctx: JobContext,
    line: Vec<u8>,
}

impl ProgressLines {
    pub(super) fn new(regex: Regex, ctx: JobContext) -> ProgressLines {
        ProgressLines {
            regex,
            ctx,
            line: Vec::new(),
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                self.end_line();
            } else if self.line.len() < MAX_PROGRESS_LINE {
                self.line.push(byte);
            }
        }
    }

    pub(super) fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        if let Some(progress) = progress_of(&self.regex, &line) {
            self.ctx.report_progress(progress);
        }
        self.line.clear();
    }
}

/// The progress a line reports, if it matches and its `done` is a number.
pub(super) fn progress_of(regex: &Regex, line: &str) -> Option<Progress> {
    let captures = regex.captures(line)?;
    let number = |group: &str| captures.name(group)?.as_str().trim().parse::<f64>().ok();
    Some(Progress {
        done: number("done")?,
        total: number("total"),
        message: Some(line.trim().chars().take(MAX_PROGRESS_MESSAGE).collect()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::super::tests::{roots, spec};
    use super::super::CommandTool;
    use super::*;
    use crate::tools::Tool;

    #[tokio::test]
    async fn output_lines_that_match_the_progress_regex_report_progress() {
        let mut spec = spec(&[
            "sh",
            "-c",
            "echo building; echo '[1/3] a' >&2; sleep 1; echo '[2/3] b'; printf '[3/3] c'",
        ]);
        spec.progress = Some(r"\[(?P<done>\d+)/(?P<total>\d+)\]".to_owned());
        let tool = CommandTool::new(spec, std::path::Path::new("."), roots()).unwrap();
        let ctx = JobContext::new(CancellationToken::new());
        let watched = ctx.signals().clone();
        let run = tokio::spawn(tool.start(&json!({})).unwrap()(ctx));
        let mut first = None;
        for _ in 0..500 {
            first = watched.progress();
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = first.expect("stderr lines count too");
        assert_eq!(first.done, 1.0, "{first:?}");
        run.await.unwrap().unwrap();
        let last = watched.progress().expect("progress was reported");
        assert_eq!((last.done, last.total), (3.0, Some(3.0)), "{last:?}");
        assert_eq!(last.to_string(), "[3/3] c", "the line is the message");
    }

    #[test]
    fn a_progress_regex_must_be_valid_and_name_its_done_group() {
        let mut bad = spec(&["true"]);
        bad.progress = Some("([".to_owned());
        let err = CommandTool::new(bad.clone(), std::path::Path::new("."), roots()).unwrap_err();
        assert!(err.contains("not a valid regex"), "{err}");
        bad.progress = Some(r"(\d+)/(\d+)".to_owned());
        let err = CommandTool::new(bad, std::path::Path::new("."), roots()).unwrap_err();
        assert!(err.contains("group named done"), "{err}");
        let line = progress_of(&Regex::new(r"(?P<done>\d+)%").unwrap(), "  40% done ");
        assert_eq!(line.map(|p| (p.done, p.total)), Some((40.0, None)));
    }
}
