//! The workspace's import rules (DESIGN.md), checked from `cargo metadata`.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn crates_only_import_what_the_design_allows() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let own: BTreeSet<String> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|d| d.starts_with("capstan"))
            .collect();
        deps.insert(name, own);
    }
    let allowed: &[(&str, &[&str])] = &[
        ("capstan-oci", &[]),
        ("capstan-proto", &["capstan-oci"]),
        ("capstan-runtime", &[]),
        (
            "capstan-gateway",
            &["capstan-oci", "capstan-proto", "capstan-runtime"],
        ),
        (
            "capstan-auth",
            &["capstan-oci", "capstan-proto", "capstan-runtime"],
        ),
        (
            "capstan-blob",
            &["capstan-oci", "capstan-proto", "capstan-runtime"],
        ),
        (
            "capstan-meta",
            &["capstan-oci", "capstan-proto", "capstan-runtime"],
        ),
        (
            "capstan-sync",
            &["capstan-oci", "capstan-proto", "capstan-runtime"],
        ),
        ("capstan-bench", &[]),
        // Starts real servers for tests; only ever a dev-dependency.
        ("capstan-testkit", &[]),
    ];
    // The testkit never ships inside a role.
    for (krate, own) in &deps {
        assert!(
            !own.contains("capstan-testkit"),
            "{krate} depends on capstan-testkit outside dev-dependencies"
        );
    }
    for (krate, ok) in allowed {
        let actual = deps
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} missing from the workspace"));
        for d in actual {
            assert!(ok.contains(&d.as_str()), "{krate} must not depend on {d}");
        }
    }
    // Every workspace crate is covered by the table (a new one needs a rule).
    for name in deps.keys() {
        assert!(
            name == "capstan" || allowed.iter().any(|(k, _)| k == name),
            "{name} has no import rule"
        );
    }
}
