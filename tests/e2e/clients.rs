//! Real clients against a real registry: skopeo copies a multi-layer image
//! from an OCI layout to Capstan and back; oras (PyPI) pushes an artifact
//! with a subject that the referrers API then lists.

use crate::oci::*;
use crate::sandbox::Sandbox;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Write an OCI image layout holding one image tagged `tag` with `layers`
/// layers; returns the manifest digest.
pub fn write_layout(dir: &Path, tag: &str, layers: usize) -> String {
    let sizes: Vec<usize> = (0..layers).map(|i| 200_000 + i * 1000).collect();
    write_layout_sized(dir, tag, &sizes)
}

/// Like [`write_layout`], with one layer of about each of `sizes` bytes.
pub fn write_layout_sized(dir: &Path, tag: &str, sizes: &[usize]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut ls = Vec::new();
    let mut diff_ids = Vec::new();
    for size in sizes {
        // A gzip stream of random bytes: clients see a compressed layer and
        // keep it as it is.
        let raw = random_bytes(*size);
        diff_ids.push(sha256(&raw));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let b = gz.finish().unwrap();
        let d = put(&b);
        ls.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": b.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": ls
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn skopeo_copies_a_multi_layer_image_there_and_back() {
    let sb = Sandbox::start().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = write_layout(&src, "v1", 3);
    let dest = format!("docker://{}/skopeo/img:v1", sb.host());
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dest,
    ]));
    // The registry holds the same manifest, byte for byte.
    let r = sb.get("/v2/skopeo/img/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());

    let back = work.path().join("back");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ]));
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    // Every blob came back identical.
    for entry in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let copied = back.join("blobs/sha256").join(entry.file_name());
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            std::fs::read(&copied).unwrap()
        );
    }
    let inspect =
        run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &dest]));
    assert_eq!(sha256(inspect.as_bytes()), digest);
}

#[tokio::test]
async fn oras_pushes_an_artifact_that_the_referrers_api_lists() {
    let sb = Sandbox::start().await;
    let (subject, m) = sb.push_image("oras/app", "v1", 1).await;
    let size = serde_json::to_vec(&m).unwrap().len();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("signature.txt");
    std::fs::write(&file, b"signed by a test").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/oras_push.py");
    let out = run(Command::new("python3").args([
        script,
        &sb.host(),
        "oras/app",
        "sig",
        file.to_str().unwrap(),
        &subject,
        &size.to_string(),
    ]));
    let pushed = out.trim().to_string();
    assert!(pushed.starts_with("sha256:"), "{out}");
    let r = sb.get(&format!("/v2/oras/app/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let listed = manifest_digests(&v);
    assert_eq!(listed, vec![pushed.clone()]);
}
