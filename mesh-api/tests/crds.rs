//! `deploy/crds/` must be what the types generate.

use mesh_api::crds;

#[test]
fn deploy_crds_are_up_to_date() {
    let dir = crds::default_dir();
    let drift = crds::stale_files(&dir).expect("renders CRDs");
    assert!(
        drift.is_clean(),
        "{} is stale (missing {:?}, changed {:?}, no longer generated {:?}); regenerate with: {}",
        dir.display(),
        drift.missing,
        drift.changed,
        drift.extra,
        crds::REGENERATE_COMMAND
    );
}

#[test]
fn every_crd_is_namespaced_with_a_status_subresource() {
    for crd in crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        for version in &crd.spec.versions {
            let status = version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref());
            assert!(
                status.is_some(),
                "{name} {} has no status subresource",
                version.name
            );
            assert!(version.served && version.storage, "{name}");
        }
    }
}
