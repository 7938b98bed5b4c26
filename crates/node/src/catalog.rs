//! STUB (agent helper): contract-only placeholder, replaced by helper/node-runtime's catalog.rs on merge.
#![allow(dead_code, unused_variables, missing_docs)]
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("image {0:?} not found in the image catalog")]
    ImageNotFound(String),
}
pub struct ImageCatalog;
#[derive(Clone, Debug)]
pub struct ImageEntry {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
}
impl ImageCatalog {
    pub fn builtin(self_exe: &Path) -> ImageCatalog {
        ImageCatalog
    }
    pub fn load_file(&mut self, path: &Path) -> Result<(), CatalogError> {
        Ok(())
    }
    pub fn lookup(&self, image: &str) -> Option<ImageEntry> {
        None
    }
    pub fn argv(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
        pod_namespace: &str,
        pod_name: &str,
    ) -> Result<(Vec<String>, Vec<(String, String)>), CatalogError> {
        if command.is_empty() {
            return Err(CatalogError::ImageNotFound(image.to_string()));
        }
        Ok((command.iter().chain(args).cloned().collect(), Vec::new()))
    }
}
