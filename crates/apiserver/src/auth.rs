//! Authentication: who is calling. Two methods, as kube-apiserver offers them: a client
//! certificate signed by the cluster CA (user = CN, groups = O) and a bearer token from the static
//! token file (`tokens.csv`, kube-apiserver's `--token-auth-file` format:
//! `token,user,uid,"group1,group2"`). A request with neither is anonymous and, except for the
//! health and version endpoints, refused with 401.
//!
//! Authorization is deliberately simple for now: every authenticated user may do everything.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The static bearer tokens the server accepts.
#[derive(Clone, Debug, Default)]
pub struct TokenFile {
    tokens: HashMap<String, User>,
}

impl TokenFile {
    /// Read `path`, creating it with one admin token if it does not exist. Returns the file and
    /// the admin token.
    pub fn load_or_create(path: &Path) -> Result<(Self, String)> {
        if !path.exists() {
            let token = format!("{:032x}", rand::random::<u128>());
            let line = format!("{token},admin,admin,\"system:masters\"\n");
            std::fs::write(path, line).with_context(|| format!("writing {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = Self::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        let admin = file
            .tokens
            .iter()
            .find(|(_, u)| u.name == "admin")
            .map(|(t, _)| t.clone())
            .unwrap_or_default();
        Ok((file, admin))
    }

    /// Parse the CSV format: `token,user,uid[,"g1,g2"]`; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Result<Self> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(4, ',');
            let token = parts.next().unwrap_or("").trim();
            let user = parts.next().unwrap_or("").trim();
            let _uid = parts.next();
            let groups = parts
                .next()
                .map(|g| {
                    g.trim()
                        .trim_matches('"')
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            anyhow::ensure!(
                !token.is_empty() && !user.is_empty(),
                "line {}: need token,user,uid",
                i + 1
            );
            tokens.insert(
                token.to_string(),
                User {
                    name: user.to_string(),
                    groups,
                },
            );
        }
        Ok(Self { tokens })
    }

    pub fn authenticate(&self, token: &str) -> Option<User> {
        self.tokens.get(token).cloned()
    }
}

/// The user named by a verified client certificate (DER): CN is the user, each O a group.
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_name_user_and_groups() {
        let f =
            TokenFile::parse("# comment\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n").expect("parses");
        assert_eq!(
            f.authenticate("abc"),
            Some(User {
                name: "alice".into(),
                groups: vec!["dev".into(), "ops".into()]
            })
        );
        assert_eq!(f.authenticate("xyz").map(|u| u.name), Some("bob".into()));
        assert_eq!(f.authenticate("nope"), None);
    }

    #[test]
    fn token_file_rejects_lines_without_user() {
        assert!(TokenFile::parse("abc\n").is_err());
    }
}
