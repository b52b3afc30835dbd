//! Every per-proxy config in mesh-controller's golden files is accepted by
//! the proxy's model: what the controller sends, the proxy can run.

use std::path::Path;

#[test]
fn the_proxy_compiles_every_golden_controller_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-controller/tests/golden");
    let mut checked = 0;
    for case in std::fs::read_dir(&root).expect("golden cases") {
        let case = case.unwrap().path();
        for file in std::fs::read_dir(&case).unwrap() {
            let file = file.unwrap().path();
            if file.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let config = mesh_proxy::model::MeshState::parse(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if let Err(e) = mesh_proxy::model::MeshState::compile(config, None) {
                panic!(
                    "{}: the proxy refuses the controller's config: {e}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} golden configs found");
}
