//! Small OCI client helpers for tests: digests, blob and manifest pushes.

use crate::sandbox::Sandbox;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn sha512(b: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(b)))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// The `digest` of every entry of an index's `manifests` (e.g. a referrers answer).
pub fn manifest_digests(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| m["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// Error code of an OCI error body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

impl Sandbox {
    /// Monolithic upload; asserts 201 and returns the digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "push blob: {}", r.text().await.unwrap());
        d
    }

    pub async fn put_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Push a manifest; asserts 201 and returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        m: &Value,
    ) -> String {
        let body = serde_json::to_vec(m).unwrap();
        let r = self
            .put_manifest_raw(repo, reference, media_type, &body)
            .await;
        let status = r.status();
        let digest = r
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(status, 201, "put manifest: {}", r.text().await.unwrap());
        let digest = digest.expect("Docker-Content-Digest");
        assert_eq!(digest, sha256(&body));
        digest
    }

    /// Push config + `layers` random layers and an OCI manifest under `tag`.
    /// Returns (manifest digest, manifest JSON).
    pub async fn push_image(&self, repo: &str, tag: &str, layers: usize) -> (String, Value) {
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
        let cd = self.push_blob(repo, &config).await;
        let mut ls = Vec::new();
        for _ in 0..layers {
            let b = random_bytes(1000);
            let d = self.push_blob(repo, &b).await;
            ls.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": b.len()}));
        }
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": ls,
        });
        let d = self.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        (d, m)
    }
}
