//! The local image catalog: there is no registry, so an image reference resolves to a command
//! line (an image's `ENTRYPOINT`/`CMD`/`ENV`) from built-in entries and an optional YAML file.
//!
//! The argv of a container follows the Kubernetes rules
//! (<https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#notes>):
//! `command` replaces the image's entrypoint and drops its cmd; `args` replace the cmd.
//!
//! Must never: run something for an unknown image without an explicit `command` (that is the
//! ErrImagePull case, reported, never silent).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The image is in no catalog and the container gives no `command` (pod status:
    /// ErrImagePull; retrying only helps once the catalog file gains the image).
    #[error("Failed to pull image \"{image}\": image not found in the node's image catalog (built-in images: myapp, nginx, switchyard/echo, busybox, alpine, debian, ubuntu, registry.k8s.io/pause; or give the container a command)")]
    ImageNotFound { image: String },
    /// The image and the container together give nothing to run.
    #[error("image \"{image}\" has no entrypoint or cmd and the container gives no command")]
    NoCommand { image: String },
    /// The catalog file cannot be read.
    #[error("image catalog {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The catalog file is not valid YAML of the expected shape.
    #[error("image catalog {path}: {message}")]
    Parse { path: String, message: String },
}

/// A container's argv and the image's environment (name, value), as [`ImageCatalog::argv`]
/// computes them.
pub type ProcessCommand = (Vec<String>, Vec<(String, String)>);

/// What an image contributes to a container: its entrypoint, cmd and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The catalog: entries by normalised reference (`name:tag` for one tag, `name` for any tag).
#[derive(Clone, Debug, Default)]
pub struct ImageCatalog {
    entries: HashMap<String, ImageEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    images: BTreeMap<String, FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Splits a reference into (repository, tag): registry prefixes of Docker Hub's library
/// dropped, a digest ignored, a missing tag reported as `None`.
fn split_reference(image: &str) -> (String, Option<String>) {
    let image = image.trim();
    let image = image.split('@').next().unwrap_or(image);
    let mut name = image;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "registry-1.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest;
            break;
        }
    }
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(colon) => (
            name[..slash + colon].to_string(),
            Some(name[slash + colon + 1..].to_string()),
        ),
        None => (name.to_string(), None),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl ImageCatalog {
    /// Built-in entries; `{self}` in them stands for `self_exe` (the switchyard binary). `{tag}`
    /// stands for the image's tag, `{pod_namespace}`/`{pod_name}` for the pod's.
    pub fn builtin(self_exe: &Path) -> ImageCatalog {
        let exe = self_exe.to_string_lossy().into_owned();
        let echo = |port: &str| ImageEntry {
            entrypoint: vec![exe.clone(), "echo-server".to_string()],
            cmd: strings(&["--port", port, "--version", "{tag}"]),
            env: vec![(
                "SWITCHYARD_POD".to_string(),
                "{pod_namespace}/{pod_name}".to_string(),
            )],
        };
        let shell = ImageEntry {
            entrypoint: Vec::new(),
            cmd: strings(&["sh"]),
            env: Vec::new(),
        };
        let mut entries = HashMap::new();
        entries.insert("myapp".to_string(), echo("80"));
        entries.insert("nginx".to_string(), echo("80"));
        entries.insert("switchyard/echo".to_string(), echo("80"));
        for distro in ["busybox", "alpine", "debian", "ubuntu"] {
            entries.insert(distro.to_string(), shell.clone());
        }
        entries.insert(
            "registry.k8s.io/pause".to_string(),
            ImageEntry {
                entrypoint: strings(&["sleep", "infinity"]),
                cmd: Vec::new(),
                env: Vec::new(),
            },
        );
        ImageCatalog { entries }
    }

    /// Add entries from a YAML file: `images: { "ref": { entrypoint: [..], cmd: [..], env: {K: V} } }`.
    /// A reference with a tag matches that tag only; one without matches any tag. Later entries
    /// replace earlier ones (a file can override a built-in).
    pub fn load_file(&mut self, path: &Path) -> Result<(), CatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: shown.clone(),
            source,
        })?;
        let file: CatalogFile = serde_yaml::from_str(&text).map_err(|e| CatalogError::Parse {
            path: shown,
            message: e.to_string(),
        })?;
        for (reference, entry) in file.images {
            let key = match split_reference(&reference) {
                (name, Some(tag)) => format!("{name}:{tag}"),
                (name, None) => name,
            };
            self.entries.insert(
                key,
                ImageEntry {
                    entrypoint: entry.entrypoint,
                    cmd: entry.cmd,
                    env: entry.env.into_iter().collect(),
                },
            );
        }
        Ok(())
    }

    /// The entry for an image reference (exact `name:tag` first, then `name` for any tag; a
    /// missing tag means `latest`; `docker.io/library/` prefixes ignored). `{tag}` is filled in.
    pub fn lookup(&self, image: &str) -> Option<ImageEntry> {
        let (name, tag) = split_reference(image);
        let tag = tag.unwrap_or_else(|| "latest".to_string());
        let entry = self
            .entries
            .get(&format!("{name}:{tag}"))
            .or_else(|| self.entries.get(&name))?;
        let fill = |s: &String| s.replace("{tag}", &tag);
        Some(ImageEntry {
            entrypoint: entry.entrypoint.iter().map(fill).collect(),
            cmd: entry.cmd.iter().map(fill).collect(),
            env: entry
                .env
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect(),
        })
    }

    /// The process argv and the image's environment, as a container runtime computes them from
    /// the image and the container's `command`/`args` (Kubernetes rules: command replaces the
    /// entrypoint and drops the image's cmd; args replace cmd). Unknown image with no command →
    /// Err(CatalogError::ImageNotFound) whose message is what the pod status shows (reason
    /// ErrImagePull). `{pod_name}`/`{pod_namespace}` in entries are replaced from the arguments.
    pub fn argv(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
        pod_namespace: &str,
        pod_name: &str,
    ) -> Result<ProcessCommand, CatalogError> {
        let entry = match self.lookup(image) {
            Some(e) => e,
            None if !command.is_empty() => ImageEntry {
                entrypoint: Vec::new(),
                cmd: Vec::new(),
                env: Vec::new(),
            },
            None => {
                return Err(CatalogError::ImageNotFound {
                    image: image.to_string(),
                })
            }
        };
        let fill = |s: &String| {
            s.replace("{pod_namespace}", pod_namespace)
                .replace("{pod_name}", pod_name)
        };
        let argv: Vec<String> = if !command.is_empty() {
            command.iter().chain(args).cloned().collect()
        } else if !args.is_empty() {
            entry
                .entrypoint
                .iter()
                .map(fill)
                .chain(args.iter().cloned())
                .collect()
        } else {
            entry
                .entrypoint
                .iter()
                .chain(&entry.cmd)
                .map(fill)
                .collect()
        };
        if argv.is_empty() {
            return Err(CatalogError::NoCommand {
                image: image.to_string(),
            });
        }
        let env = entry
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v)))
            .collect();
        Ok((argv, env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(items: &[&str]) -> Vec<String> {
        strings(items)
    }

    fn catalog() -> ImageCatalog {
        ImageCatalog::builtin(Path::new("/bin/switchyard"))
    }

    #[test]
    fn myapp_runs_the_echo_server_with_its_tag_as_version() {
        let (argv, env) = catalog()
            .argv("myapp:v2", &[], &[], "default", "myapp-abc")
            .expect("argv");
        assert_eq!(
            argv,
            s(&[
                "/bin/switchyard",
                "echo-server",
                "--port",
                "80",
                "--version",
                "v2"
            ])
        );
        assert_eq!(
            env,
            vec![(
                "SWITCHYARD_POD".to_string(),
                "default/myapp-abc".to_string()
            )]
        );
        let (argv, _) = catalog()
            .argv("docker.io/library/nginx", &[], &[], "ns", "p")
            .expect("nginx");
        assert_eq!(argv[5], "latest", "a missing tag means latest");
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd_and_args_replace_cmd() {
        let c = catalog();
        let run = |command: &[&str], args: &[&str]| {
            c.argv("myapp:v1", &s(command), &s(args), "ns", "p")
                .expect("argv")
                .0
        };
        assert_eq!(
            run(&[], &["--port", "8080"]),
            s(&["/bin/switchyard", "echo-server", "--port", "8080"])
        );
        assert_eq!(run(&["sleep"], &[]), s(&["sleep"]));
        assert_eq!(run(&["sleep"], &["10"]), s(&["sleep", "10"]));
        let (busybox, _) = c
            .argv("busybox:1.36", &[], &s(&["-c", "echo hi"]), "ns", "p")
            .expect("busybox args");
        assert_eq!(busybox, s(&["-c", "echo hi"]), "no entrypoint: args alone");
        let (shell, _) = c.argv("alpine", &[], &[], "ns", "p").expect("alpine");
        assert_eq!(shell, s(&["sh"]));
    }

    #[test]
    fn unknown_images_need_a_command_and_say_so() {
        let c = catalog();
        let err = c
            .argv("example.com/nope:1", &[], &s(&["x"]), "ns", "p")
            .expect_err("unknown");
        assert!(matches!(err, CatalogError::ImageNotFound { .. }));
        assert!(err.to_string().contains("example.com/nope:1"), "{err}");
        let (argv, env) = c
            .argv(
                "example.com/nope:1",
                &s(&["/bin/true"]),
                &s(&["a"]),
                "ns",
                "p",
            )
            .expect("explicit command");
        assert_eq!(argv, s(&["/bin/true", "a"]));
        assert!(env.is_empty());
    }

    #[test]
    fn tags_and_prefixes_are_normalised() {
        let c = catalog();
        assert!(c.lookup("registry.k8s.io/pause:3.10").is_some());
        assert!(c.lookup("docker.io/busybox").is_some());
        assert!(c.lookup("busybox@sha256:abcd").is_some());
        assert!(
            c.lookup("localhost:5000/busybox").is_none(),
            "a port is not a tag"
        );
        assert_eq!(
            split_reference("localhost:5000/app:v3"),
            ("localhost:5000/app".to_string(), Some("v3".to_string()))
        );
    }

    #[test]
    fn file_entries_add_and_override_with_exact_tags_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.yaml");
        std::fs::write(
            &path,
            r#"
images:
  "example.com/web":
    entrypoint: ["/usr/bin/web"]
    cmd: ["--serve"]
    env: {MODE: any, POD: "{pod_name}"}
  "example.com/web:v9":
    entrypoint: ["/usr/bin/web9"]
  "myapp:v1":
    cmd: ["echo", "overridden"]
"#,
        )
        .expect("write");
        let mut c = catalog();
        c.load_file(&path).expect("load");
        let (argv, env) = c
            .argv("example.com/web:v1", &[], &[], "ns", "p1")
            .expect("any tag");
        assert_eq!(argv, s(&["/usr/bin/web", "--serve"]));
        assert_eq!(
            env,
            vec![
                ("MODE".to_string(), "any".to_string()),
                ("POD".to_string(), "p1".to_string())
            ]
        );
        let (argv, _) = c
            .argv("example.com/web:v9", &[], &[], "ns", "p")
            .expect("v9");
        assert_eq!(argv, s(&["/usr/bin/web9"]));
        let (argv, _) = c.argv("myapp:v1", &[], &[], "ns", "p").expect("override");
        assert_eq!(argv, s(&["echo", "overridden"]));
        let (argv, _) = c.argv("myapp:v2", &[], &[], "ns", "p").expect("builtin");
        assert_eq!(argv[1], "echo-server");

        std::fs::write(&path, "images: {x: {entry: []}}").expect("write");
        assert!(matches!(
            c.load_file(&path),
            Err(CatalogError::Parse { .. })
        ));
    }
}
