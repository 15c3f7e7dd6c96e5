//! Reading a service crate: its package and library names and the type that implements `Service`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A service crate on disk.
#[derive(Debug, Clone)]
pub struct ServiceCrate {
    /// Absolute path of the crate directory.
    pub dir: PathBuf,
    /// Cargo package name.
    pub package: String,
    /// Rust library name (`-` becomes `_`).
    pub lib_name: String,
    /// The type implementing `runtime_abi::Service` (`[package.metadata.janus] service`).
    pub service_type: String,
}

impl ServiceCrate {
    /// Reads and checks the crate at `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<ServiceCrate> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("service directory {} not found", dir.display()))?;
        let manifest_path = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("{} has no Cargo.toml", dir.display()))?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", manifest_path.display()))?;
        let package = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{} has no [package] name", manifest_path.display()))?
            .to_string();
        let lib_name = doc
            .get("lib")
            .and_then(|l| l.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| package.replace('-', "_"));
        let service_type = doc
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("janus"))
            .and_then(|j| j.get("service"))
            .and_then(|s| s.as_str())
            .with_context(|| {
                format!(
                    "{} lacks `[package.metadata.janus] service = \"TypeName\"` naming the type that implements runtime_abi::Service",
                    manifest_path.display()
                )
            })?
            .to_string();
        if !is_rust_path(&service_type) {
            bail!("[package.metadata.janus] service = {service_type:?} is not a Rust type path");
        }
        let krate = ServiceCrate {
            dir,
            package,
            lib_name,
            service_type,
        };
        krate.check_no_std()?;
        Ok(krate)
    }

    /// A service must build for the unikernel too: its library root must be `#![no_std]` and must not
    /// pull std back in.
    fn check_no_std(&self) -> anyhow::Result<()> {
        let lib = self.dir.join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).with_context(|| {
            format!("{} not found: a service is a library crate", lib.display())
        })?;
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        if !code.contains("#![no_std]") {
            bail!(
                "{} is not #![no_std]: a Janus service must build without std so it can run as a unikernel",
                lib.display()
            );
        }
        if code.contains("extern crate std") {
            bail!(
                "{} uses `extern crate std`: a Janus service may use core and alloc only (std is not available in the unikernel)",
                lib.display()
            );
        }
        Ok(())
    }

    /// `crate::Type` as the wrapper names it.
    pub fn type_path(&self) -> String {
        format!("{}::{}", self.lib_name, self.service_type)
    }
}

/// Whether `s` is a Rust path (`a::B`, identifiers only).
pub(crate) fn is_rust_path(s: &str) -> bool {
    !s.is_empty()
        && s.split("::").all(|seg| {
            let mut chars = seg.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_samples() {
        let root = crate::janus_home();
        let k = ServiceCrate::load(&root.join("samples/kv")).expect("kv loads");
        assert_eq!(k.package, "janus-samples-kv");
        assert_eq!(k.type_path(), "janus_samples_kv::Kv");
    }

    #[test]
    fn refuses_std_and_missing_metadata() {
        let dir = std::env::temp_dir().join(format!("janus-svc-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"x\"\n[package.metadata.janus]\nservice = \"X\"\n",
        )
        .expect("write");
        std::fs::write(dir.join("src/lib.rs"), "use std::fs;\n").expect("write");
        let err = ServiceCrate::load(&dir).expect_err("not no_std");
        assert!(err.to_string().contains("is not #![no_std]"), "{err}");
        std::fs::write(dir.join("src/lib.rs"), "#![no_std]\nextern crate std;\n").expect("write");
        let err = ServiceCrate::load(&dir).expect_err("extern crate std");
        assert!(err.to_string().contains("extern crate std"), "{err}");
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        let err = ServiceCrate::load(&dir).expect_err("no metadata");
        assert!(err.to_string().contains("metadata.janus"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
