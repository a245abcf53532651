use super::*;
use capstan_runtime::config::retention::RetentionConfig;
use serde_json::json;

const NOW: i64 = 1_000_000;
const HOUR: i64 = 3600;

fn retention(policies: serde_json::Value) -> Retention {
    let config: RetentionConfig =
        serde_json::from_value(json!({"delay": "1h", "policies": policies})).unwrap();
    let storage = StorageConfig {
        retention: Some(config),
        ..StorageConfig::default()
    };
    Retention::from_config(&storage).unwrap()
}

fn manifest(pushed_ago: i64, pulled_ago: Option<i64>) -> ManifestState {
    ManifestState {
        pushed_at: NOW - pushed_ago,
        touched_at: NOW - pushed_ago,
        pulled_at: pulled_ago.map(|a| NOW - a),
        subject: None,
        children: Vec::new(),
    }
}

/// A repository whose tag `t` names manifest `sha256:t`.
fn repo(tags: &[(&str, i64, Option<i64>)]) -> RepoState {
    let mut s = RepoState::default();
    for (t, pushed, pulled) in tags {
        s.manifests
            .insert(format!("sha256:{t}"), manifest(*pushed, *pulled));
        s.tags.insert(t.to_string(), format!("sha256:{t}"));
    }
    s
}

fn deleted_tags(d: &[Decision]) -> Vec<&str> {
    d.iter()
        .filter_map(|d| match d {
            Decision::DeleteTag { tag, .. } => Some(tag.as_str()),
            _ => None,
        })
        .collect()
}

fn deleted_manifests(d: &[Decision]) -> Vec<(&str, &str)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::DeleteManifest { digest, reason, .. } => Some((digest.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn no_policy_keeps_every_tag_and_removes_old_untagged_manifests() {
    let r = retention(json!([]));
    let mut s = repo(&[("v1", 10 * HOUR, None)]);
    s.manifests
        .insert("sha256:old".into(), manifest(2 * HOUR, None));
    s.manifests
        .insert("sha256:young".into(), manifest(HOUR / 2, None));
    let d = r.plan("any/repo", &s, NOW);
    assert!(deleted_tags(&d).is_empty());
    assert_eq!(deleted_manifests(&d), [("sha256:old", UNTAGGED)]);
}

#[test]
fn most_recently_pushed_count_one_keeps_exactly_one_tag_of_its_pattern() {
    // zot#3804: every tag of the pattern was marked for deletion.
    let r = retention(json!([{"repositories": ["**"], "keepTags": [
        {"patterns": ["^env18-"], "mostRecentlyPushedCount": 1},
        {"patterns": [".*"]}
    ]}]));
    let s = repo(&[
        ("env18-a", 30 * 24 * HOUR, None),
        ("env18-b", 31 * 24 * HOUR, None),
        ("env18-c", 32 * 24 * HOUR, None),
        ("latest", 40 * 24 * HOUR, None),
    ]);
    let d = r.plan("r", &s, NOW);
    assert_eq!(deleted_tags(&d), ["env18-b", "env18-c"]);
    assert!(
        d.iter()
            .all(|d| !matches!(d, Decision::DeleteTag { reason, .. } if *reason != NO_RULE))
    );
}

#[test]
fn criteria_are_ored_and_unmatched_tags_go() {
    let r = retention(json!([{"repositories": ["infra/**"], "keepTags": [{
        "patterns": ["^v"],
        "mostRecentlyPulledCount": 1,
        "pushedWithin": "24h",
        "pulledWithin": "48h"
    }]}]));
    let s = repo(&[
        ("v1", 100 * HOUR, Some(HOUR)),       // most recently pulled
        ("v2", 100 * HOUR, Some(30 * HOUR)),  // pulled within 48h
        ("v3", 2 * HOUR, None),               // pushed within 24h
        ("v4", 100 * HOUR, Some(100 * HOUR)), // nothing
        ("v5", 100 * HOUR, None),             // never pulled
        ("nightly", HOUR, None),              // matches no pattern
    ]);
    let d = r.plan("infra/db", &s, NOW);
    assert_eq!(deleted_tags(&d), ["nightly", "v4", "v5"]);
    let reasons: Vec<&str> = d
        .iter()
        .filter_map(|d| match d {
            Decision::DeleteTag { tag, reason, .. } if tag == "nightly" => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [NO_PATTERN]);
    // The deleted tags' manifests are untagged now, but young enough? No:
    // they are older than the delay, so they go too.
    let gone: BTreeSet<&str> = deleted_manifests(&d).into_iter().map(|(m, _)| m).collect();
    assert_eq!(gone, BTreeSet::from(["sha256:v4", "sha256:v5"]));
    // Another repository: no policy, nothing of its tags goes.
    assert!(deleted_tags(&r.plan("app/web", &s, NOW)).is_empty());
}

#[test]
fn the_first_matching_policy_wins() {
    let r = retention(json!([
        {"repositories": ["team/*"], "keepTags": [{"patterns": ["^keep"]}]},
        {"repositories": ["**"], "keepTags": [{"patterns": [".*"]}]}
    ]));
    let s = repo(&[("keep-me", HOUR, None), ("drop-me", HOUR, None)]);
    assert_eq!(deleted_tags(&r.plan("team/a", &s, NOW)), ["drop-me"]);
    assert!(deleted_tags(&r.plan("team/a/b", &s, NOW)).is_empty());
}

#[test]
fn children_of_a_tagged_index_stay_and_follow_an_untagged_one() {
    // distribution#3178: the platform manifests of a tagged index are untagged.
    let r = retention(json!([]));
    let mut s = repo(&[("multi", 10 * HOUR, None)]);
    s.manifests.get_mut("sha256:multi").unwrap().children =
        vec!["sha256:amd64".into(), "sha256:arm64".into()];
    s.manifests
        .insert("sha256:amd64".into(), manifest(10 * HOUR, None));
    s.manifests
        .insert("sha256:arm64".into(), manifest(10 * HOUR, None));
    let mut orphan_index = manifest(10 * HOUR, None);
    orphan_index.children = vec!["sha256:s390x".into()];
    s.manifests.insert("sha256:oldindex".into(), orphan_index);
    s.manifests
        .insert("sha256:s390x".into(), manifest(10 * HOUR, None));
    let d = r.plan("r", &s, NOW);
    assert_eq!(
        deleted_manifests(&d),
        [("sha256:oldindex", UNTAGGED), ("sha256:s390x", UNTAGGED)]
    );
}

#[test]
fn referrers_of_a_missing_subject_follow_delete_referrers() {
    let mut s = repo(&[("v1", 10 * HOUR, None)]);
    let mut sig = manifest(10 * HOUR, None);
    sig.subject = Some("sha256:v1".into());
    s.manifests.insert("sha256:sig-of-v1".into(), sig.clone());
    sig.subject = Some("sha256:gone".into());
    s.manifests.insert("sha256:sig-of-gone".into(), sig.clone());
    // A referrer of a referrer that goes, goes next.
    sig.subject = Some("sha256:sig-of-gone".into());
    s.manifests.insert("sha256:sig-of-sig".into(), sig);
    let keep = retention(json!([{"repositories": ["**"], "deleteReferrers": false}]));
    assert!(deleted_manifests(&keep.plan("r", &s, NOW)).is_empty());
    let drop = retention(json!([{"repositories": ["**"], "deleteReferrers": true}]));
    assert_eq!(
        deleted_manifests(&drop.plan("r", &s, NOW)),
        [
            ("sha256:sig-of-gone", REFERRER),
            ("sha256:sig-of-sig", REFERRER)
        ]
    );
}

#[test]
fn tagged_referrers_and_cosign_tags_follow_their_subject() {
    let drop = retention(json!([{"repositories": ["**"], "deleteReferrers": true}]));
    let mut s = repo(&[("sbom", 10 * HOUR, None)]);
    s.manifests.get_mut("sha256:sbom").unwrap().subject = Some("sha256:gone".into());
    let hex = "ab".repeat(32);
    let sig_tag = format!("sha256-{hex}.sig");
    s.manifests
        .insert("sha256:cosign".into(), manifest(10 * HOUR, None));
    s.tags.insert(sig_tag.clone(), "sha256:cosign".into());
    let d = drop.plan("r", &s, NOW);
    assert_eq!(deleted_tags(&d), [sig_tag.as_str()]);
    let mut gone = deleted_manifests(&d);
    gone.sort();
    assert_eq!(
        gone,
        [("sha256:cosign", UNTAGGED), ("sha256:sbom", REFERRER)]
    );
    // Its image present, a cosign tag is an ordinary tag.
    s.manifests
        .insert(format!("sha256:{hex}"), manifest(10 * HOUR, None));
    s.tags.insert("image".into(), format!("sha256:{hex}"));
    assert!(deleted_tags(&drop.plan("r", &s, NOW)).is_empty());
}

#[test]
fn a_tag_whose_manifest_the_snapshot_lacks_is_kept() {
    let r = retention(json!([{"repositories": ["**"], "keepTags": [
        {"patterns": [".*"], "pushedWithin": "1h"}]}]));
    let mut s = repo(&[("old", 10 * HOUR, None)]);
    s.tags
        .insert("just-pushed".into(), "sha256:not-in-snapshot".into());
    assert_eq!(deleted_tags(&r.plan("r", &s, NOW)), ["old"]);
}

#[test]
fn an_untagged_manifest_pushed_again_lately_stays() {
    // Say the platform manifest of an index about to be pushed: first
    // pushed long ago, pushed again a moment ago.
    let r = retention(json!([]));
    let mut s = RepoState::default();
    let mut again = manifest(10 * HOUR, None);
    again.touched_at = NOW - 10;
    s.manifests.insert("sha256:again".into(), again);
    s.manifests
        .insert("sha256:old".into(), manifest(10 * HOUR, None));
    assert_eq!(
        deleted_manifests(&r.plan("r", &s, NOW)),
        [("sha256:old", UNTAGGED)]
    );
}

#[test]
fn delete_untagged_false_keeps_them_and_the_delay_spares_young_ones() {
    let r = retention(json!([{"repositories": ["**"], "deleteUntagged": false}]));
    let mut s = RepoState::default();
    s.manifests
        .insert("sha256:old".into(), manifest(10 * HOUR, None));
    assert!(r.plan("r", &s, NOW).is_empty());
    let r = retention(json!([]));
    s.manifests
        .insert("sha256:young".into(), manifest(HOUR - 1, None));
    assert_eq!(
        deleted_manifests(&r.plan("r", &s, NOW)),
        [("sha256:old", UNTAGGED)]
    );
}

#[test]
fn bad_globs_and_patterns_are_named_by_key() {
    let mut storage = StorageConfig {
        retention: Some(
            serde_json::from_value(json!({"policies": [{"repositories": ["ok"],
                "keepTags": [{"patterns": ["("]}]}]}))
            .unwrap(),
        ),
        ..StorageConfig::default()
    };
    let e = Retention::from_config(&storage).unwrap_err();
    assert!(
        e.starts_with("storage.retention.policies[0].keepTags[0].patterns[0] \"(\""),
        "{e}"
    );
    storage.retention =
        Some(serde_json::from_value(json!({"policies": [{"repoNames": ["a/[b"]}]})).unwrap());
    let e = Retention::from_config(&storage).unwrap_err();
    assert!(
        e.starts_with("storage.retention.policies[0].repositories[0]"),
        "{e}"
    );
}
