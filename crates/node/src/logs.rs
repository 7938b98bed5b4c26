//! STUB (agent helper): contract-only placeholder, replaced by helper/node-runtime's logs.rs on merge.
#![allow(dead_code, unused_variables, missing_docs)]
use std::path::{Path, PathBuf};
pub fn container_log_path(
    root_dir: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart_count: u32,
) -> PathBuf {
    root_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"))
        .join(container)
        .join(format!("{restart_count}.log"))
}
