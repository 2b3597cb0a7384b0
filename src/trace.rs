//! Runtime traces: JSON Lines, one call a line,
//! `{"tool": "...", "args": {...}, "runtime_s": 12.5, "ok": true}` (`ok` optional,
//! default true). [`TraceFile`] reads one (a file, gzip when its name ends in `.gz`,
//! or stdin for `-`) line by line, skipping bad lines with the reason;
//! [`export_trace`] writes what a server has learned as one.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::Outcome;
use crate::store::{Sample, Store, StoreError};

/// One call of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The tool.
    pub tool: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Value,
    /// How long it ran.
    pub runtime_s: f64,
    /// Whether it succeeded.
    #[serde(default = "default_ok", skip_serializing_if = "is_true")]
    pub ok: bool,
    /// The run was cut off (cancelled, stopped at shutdown or by its hard timeout) after
    /// `runtime_s`: it would have run at least that long.
    #[serde(default, skip_serializing_if = "is_false")]
    pub censored: bool,
}

fn is_false(censored: &bool) -> bool {
    !*censored
}

fn default_ok() -> bool {
    true
}

fn is_true(ok: &bool) -> bool {
    *ok
}

impl TraceRecord {
    /// Parses one trace line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<TraceRecord, String> {
        let record: TraceRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if !(record.runtime_s.is_finite() && record.runtime_s >= 0.0) {
            return Err(format!(
                "runtime_s must be a number of seconds ≥ 0, got {}",
                record.runtime_s
            ));
        }
        if record.tool.is_empty() {
            return Err("tool is empty".to_owned());
        }
        Ok(record)
    }
}

/// Why a trace could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The trace file cannot be opened.
    #[error("cannot open the trace {path}: {source}")]
    Open {
        /// The trace.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line cannot be read (a disk error, bad gzip, a line that is not UTF-8).
    #[error("cannot read line {line} of the trace {path}: {source}")]
    Read {
        /// The trace.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why.
        source: std::io::Error,
    },
    /// Lines were read, and none was a call.
    #[error(
        "no line of the trace {path} is a call ({skipped} skipped): a trace has one JSON object \
         a line, {{\"tool\": NAME, \"args\": {{…}}, \"runtime_s\": SECONDS, \"ok\": true}}; \
         `smart-async export` writes one from what a server has learned, \
         examples/make_traces.rs synthetic ones"
    )]
    NoCalls {
        /// The trace.
        path: PathBuf,
        /// The lines skipped.
        skipped: u64,
    },
    /// The store's samples cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The trace cannot be written.
    #[error("cannot write the trace: {0}")]
    Write(#[source] std::io::Error),
}

/// What reading a trace tells its watcher, for a progress bar and the bad lines.
pub trait TraceWatch {
    /// `bytes` more of the trace were read (decompressed, for gzip).
    fn read(&mut self, bytes: u64) {
        let _ = bytes;
    }

    /// Line `line` (from 1) was skipped, for `reason`.
    fn skipped(&mut self, line: usize, reason: &str) {
        let _ = (line, reason);
    }
}

/// A watcher that wants to hear nothing.
impl TraceWatch for () {}

/// What a trace held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCount {
    /// Calls read.
    pub calls: u64,
    /// Bad lines skipped.
    pub skipped: u64,
}

/// A trace opened for reading.
pub struct TraceFile {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    size_bytes: Option<u64>,
}

impl TraceFile {
    /// Opens `path`: stdin for `-`, gzip when the name ends in `.gz`.
    pub fn open(path: &Path) -> Result<TraceFile, TraceError> {
        const BUFFER_BYTES: usize = 1 << 16;
        let (reader, size_bytes): (Box<dyn BufRead>, Option<u64>) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdin().lock()), None)
        } else {
            let file = std::fs::File::open(path).map_err(|source| TraceError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            if path.extension().is_some_and(|ext| ext == "gz") {
                let lines = flate2::read::MultiGzDecoder::new(file);
                // Decompressed bytes are counted: there is no total to show against.
                let reader = std::io::BufReader::with_capacity(BUFFER_BYTES, lines);
                (Box::new(reader), None)
            } else {
                let size_bytes = file.metadata().ok().map(|m| m.len());
                let reader = std::io::BufReader::with_capacity(BUFFER_BYTES, file);
                (Box::new(reader), size_bytes)
            }
        };
        Ok(TraceFile {
            path: path.to_path_buf(),
            reader,
            size_bytes,
        })
    }

    /// Reads `reader` as the trace named `path` (for its messages).
    pub fn from_reader(path: impl Into<PathBuf>, reader: impl BufRead + 'static) -> TraceFile {
        TraceFile {
            path: path.into(),
            reader: Box::new(reader),
            size_bytes: None,
        }
    }

    /// The size of the file when it is read as it is (not stdin, not gzip).
    pub fn size_bytes(&self) -> Option<u64> {
        self.size_bytes
    }

    /// Hands each call to `step`, in order, telling `watch` what was read and skipped.
    /// A trace with lines and not one call is an error: it is not a trace.
    pub fn for_each(
        self,
        watch: &mut impl TraceWatch,
        mut step: impl FnMut(&TraceRecord),
    ) -> Result<TraceCount, TraceError> {
        let mut count = TraceCount {
            calls: 0,
            skipped: 0,
        };
        for (index, line) in self.reader.lines().enumerate() {
            let line = line.map_err(|source| TraceError::Read {
                path: self.path.clone(),
                line: index + 1,
                source,
            })?;
            watch.read(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            match TraceRecord::parse(&line) {
                Ok(record) => {
                    count.calls += 1;
                    step(&record);
                }
                Err(reason) => {
                    count.skipped += 1;
                    watch.skipped(index + 1, &reason);
                }
            }
        }
        if count.calls == 0 && count.skipped > 0 {
            return Err(TraceError::NoCalls {
                path: self.path,
                skipped: count.skipped,
            });
        }
        Ok(count)
    }
}

impl TraceRecord {
    /// A stored run as a trace line, its features standing in for its arguments (the
    /// arguments themselves are not stored); a run cut off is a censored line.
    pub fn from_sample(sample: &Sample) -> TraceRecord {
        let args: serde_json::Map<String, Value> = sample
            .features
            .iter()
            .map(|f| (f.name.clone(), serde_json::json!(f.value)))
            .collect();
        TraceRecord {
            tool: sample.tool.to_string(),
            args: Value::Object(args),
            runtime_s: sample.runtime_s,
            ok: sample.outcome != Outcome::Failed,
            censored: sample.outcome.is_censored(),
        }
    }
}

/// Writes the store's samples (of `tool`, or all) to `out` as a trace, one line a run;
/// returns the lines written.
pub fn export_trace(
    store: &Store,
    tool: Option<&str>,
    mut out: impl Write,
) -> Result<u64, TraceError> {
    let mut lines = 0;
    for sample in store.samples(tool) {
        let record = TraceRecord::from_sample(&sample?);
        serde_json::to_writer(&mut out, &record)
            .map_err(|e| TraceError::Write(std::io::Error::other(e)))?;
        out.write_all(b"\n").map_err(TraceError::Write)?;
        lines += 1;
    }
    out.flush().map_err(TraceError::Write)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;

    #[test]
    fn lines_parse_with_defaults_and_bad_ones_say_why() {
        let r = TraceRecord::parse(r#"{"tool": "t", "args": {"n": 1}, "runtime_s": 2.5}"#).unwrap();
        assert!(r.ok);
        assert!(TraceRecord::parse(r#"{"tool": "t", "runtime_s": -1}"#)
            .unwrap_err()
            .contains("≥ 0"));
        assert!(TraceRecord::parse(r#"{"tool": "t"}"#)
            .unwrap_err()
            .contains("runtime_s"));
        assert!(TraceRecord::parse("not json").is_err());
    }

    #[derive(Default)]
    struct Heard {
        bytes: u64,
        skipped: Vec<(usize, String)>,
    }

    impl TraceWatch for Heard {
        fn read(&mut self, bytes: u64) {
            self.bytes += bytes;
        }
        fn skipped(&mut self, line: usize, reason: &str) {
            self.skipped.push((line, reason.to_owned()));
        }
    }

    #[test]
    fn every_call_is_stepped_in_order_and_bad_lines_are_skipped_with_their_number() {
        let text = "{\"tool\": \"a\", \"runtime_s\": 1}\n\nnot json\n{\"tool\": \"b\", \"runtime_s\": 2}\n";
        let mut heard = Heard::default();
        let mut tools = Vec::new();
        let count = TraceFile::from_reader("t.jsonl", std::io::Cursor::new(text))
            .for_each(&mut heard, |record| tools.push(record.tool.clone()))
            .unwrap();
        assert_eq!(tools, ["a", "b"]);
        assert_eq!(
            count,
            TraceCount {
                calls: 2,
                skipped: 1
            }
        );
        assert_eq!(heard.bytes, text.len() as u64);
        assert_eq!(heard.skipped.len(), 1);
        assert_eq!(heard.skipped[0].0, 3);
    }

    #[test]
    fn a_file_of_no_calls_is_not_a_trace_and_a_missing_one_says_so() {
        let error = TraceFile::from_reader("t.jsonl", std::io::Cursor::new("a\nb\n"))
            .for_each(&mut (), |_| {})
            .unwrap_err();
        assert!(
            matches!(error, TraceError::NoCalls { skipped: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("smart-async export"), "{error}");
        let empty = TraceFile::from_reader("t.jsonl", std::io::Cursor::new(""));
        assert_eq!(
            empty.for_each(&mut (), |_| {}).unwrap(),
            TraceCount {
                calls: 0,
                skipped: 0
            }
        );
        let error = TraceFile::open(Path::new("no/such/trace.jsonl"))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("cannot open the trace"),
            "{error}"
        );
    }

    #[test]
    fn a_gzip_trace_reads_as_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"{\"tool\": \"a\", \"runtime_s\": 1}\n")
            .unwrap();
        gz.finish().unwrap();
        let file = TraceFile::open(&path).unwrap();
        assert_eq!(file.size_bytes(), None);
        let count = file.for_each(&mut (), |_| {}).unwrap();
        assert_eq!(count.calls, 1);
    }

    #[test]
    fn a_sample_is_a_line_with_its_features_for_arguments_and_a_cut_run_is_censored() {
        let features = Features::from_args(&serde_json::json!({"kb": 300}));
        let mut sample = Sample {
            tool: "resize".into(),
            features,
            runtime_s: 2.5,
            outcome: Outcome::Failed,
            finished_at_ms: 0,
        };
        let record = TraceRecord::from_sample(&sample);
        assert_eq!(record.tool, "resize");
        assert_eq!(record.args["kb"], serde_json::json!(300.0));
        assert!(!record.ok && !record.censored);
        sample.outcome = Outcome::Cancelled;
        let line = serde_json::to_string(&TraceRecord::from_sample(&sample)).unwrap();
        assert!(
            line.ends_with(r#""runtime_s":2.5,"censored":true}"#),
            "{line}"
        );
        assert!(TraceRecord::parse(&line).unwrap().censored);
    }
}
