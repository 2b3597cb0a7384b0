//! The directories the built-in tools may read, and the one rule for resolving a path
//! argument inside them.
//!
//! A path is resolved against the first root when relative, then canonicalised (which
//! follows `..` and symlinks), and must land inside one of the roots. So `..`, absolute
//! paths and symlinks that lead out of the roots are refused, while the same moves
//! that stay inside are fine. What is read under the path is opened from the root's
//! handle down without following symlinks ([`walk`](super::walk)), so a path changed
//! after it was resolved cannot lead out either.

use std::path::PathBuf;

/// The allowed roots, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

/// A root that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("root directory {path} cannot be used: {source}; pass an existing directory to --root")]
pub struct RootError {
    path: PathBuf,
    source: std::io::Error,
}

impl Roots {
    /// Canonicalises each root; every one must be an existing directory.
    pub fn new(roots: &[PathBuf]) -> Result<Roots, RootError> {
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            let path = root.canonicalize().map_err(|source| RootError {
                path: root.clone(),
                source,
            })?;
            if !path.is_dir() {
                return Err(RootError {
                    path: root.clone(),
                    source: std::io::Error::other("not a directory"),
                });
            }
            canonical.push(path);
        }
        Ok(Roots { roots: canonical })
    }

    /// The roots, first one first.
    pub fn paths(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Resolves a path argument to a canonical path inside the roots.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        self.locate(path).map(|located| located.path)
    }

    /// Resolves a path argument to a canonical path inside the roots, with the root it
    /// lies in: where a walk of it starts from.
    pub fn locate(&self, path: &str) -> Result<Located, String> {
        let first = self.roots.first().ok_or_else(|| {
            "no root directory is configured: start the server with --root DIR".to_owned()
        })?;
        let joined = first.join(path);
        let canonical = joined.canonicalize().map_err(|e| {
            format!(
                "path '{path}' cannot be read ({e}); paths are relative to {}",
                first.display()
            )
        })?;
        match self.roots.iter().find(|root| canonical.starts_with(root)) {
            Some(root) => Ok(Located {
                root: root.clone(),
                path: canonical,
            }),
            None => Err(format!(
                "path '{path}' is outside the allowed roots ({}): use a path inside them",
                self.describe()
            )),
        }
    }

    /// The roots as a comma-separated list.
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A path inside the roots, canonical, and the root it lies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The root.
    pub root: PathBuf,
    /// The path.
    pub path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/one.txt"), "12345").unwrap();
        std::fs::write(dir.path().join("a/b/two.txt"), "123").unwrap();
        let roots = Roots::new(&[dir.path().join("a")]).unwrap();
        (dir, roots)
    }

    #[test]
    fn relative_paths_resolve_against_the_first_root() {
        let (_dir, roots) = tree();
        assert_eq!(roots.resolve("b").unwrap(), roots.paths()[0].join("b"));
        assert_eq!(roots.resolve(".").unwrap(), roots.paths()[0]);
        assert_eq!(
            roots.resolve("b/../one.txt").unwrap(),
            roots.paths()[0].join("one.txt")
        );
    }

    #[test]
    fn paths_out_of_the_roots_are_refused() {
        let (dir, roots) = tree();
        let err = roots.resolve("..").unwrap_err();
        assert!(err.contains("outside the allowed roots"), "{err}");
        assert!(roots.resolve("/etc").unwrap_err().contains("outside"));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("a/escape")).unwrap();
        assert!(roots.resolve("escape").unwrap_err().contains("outside"));
        let inside = roots.paths()[0].join("one.txt");
        assert_eq!(
            roots.resolve(inside.to_str().unwrap()).unwrap(),
            inside,
            "absolute inside is fine"
        );
        assert!(roots
            .resolve("missing")
            .unwrap_err()
            .contains("cannot be read"));
    }

    #[test]
    fn a_missing_root_says_what_to_pass() {
        let err = Roots::new(&[PathBuf::from("/no/such/dir")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("pass an existing directory to --root"),
            "{err}"
        );
    }
}
