//! Example GossipNetwork manifests (`crds/examples/`) checked against the committed CRD's
//! `openAPIV3Schema` with JSON Schema (draft 4, the dialect OpenAPI v3.0 schemas derive
//! from), and against the operator's own checks.
//!
//! - `valid/*.yaml` must pass the schema, deserialize into [`GossipNetwork`] and render a
//!   configuration the sidecar parses back unchanged;
//! - `invalid/*.yaml` must be rejected by the schema at the instance path named in their
//!   `# expect-error: <JSON pointer>` line;
//! - `rejected-by-operator/*.yaml` pass the schema but [`GossipNetwork::render`] rejects
//!   them naming the field in their `# expect-error: <field>` line.
//!
//! The schema is what the API server enforces, translated for a JSON Schema validator where
//! Kubernetes uses its own extensions:
//! - `nullable: true` (OpenAPI 3.0) becomes `"null"` added to `type`;
//! - `x-kubernetes-list-type: set` (which the API server enforces as uniqueness of the items)
//!   becomes `uniqueItems: true`;
//! - objects under `spec` with `properties` get `additionalProperties: false`, as
//!   `kubectl apply`'s strict field validation (the default since Kubernetes 1.27) rejects
//!   unknown fields rather than pruning them;
//! - `x-kubernetes-list-type: map` (status conditions only) has no JSON Schema equivalent
//!   and is left out; the examples carry no status.

use std::path::{Path, PathBuf};

use openmatch_gossip_crds::{GossipNetwork, SidecarConfig};
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

fn read_yaml(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    let value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (text, value)
}

/// The `# expect-error: ...` line of an example.
fn expected_error(path: &Path, text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect-error: "))
        .unwrap_or_else(|| panic!("{} has no `# expect-error:` line", path.display()))
        .trim()
        .to_owned()
}

/// Translates the CRD's structural schema into plain JSON Schema (see the module docs).
fn translate(schema: &mut Value, under_spec: bool) {
    let Some(obj) = schema.as_object_mut() else { return };
    if obj.remove("nullable") == Some(Value::Bool(true))
        && let Some(Value::String(t)) = obj.get("type").cloned()
    {
        obj.insert("type".into(), serde_json::json!([t, "null"]));
    }
    match obj.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            obj.insert("uniqueItems".into(), Value::Bool(true));
        }
        Some("map") => {
            obj.remove("x-kubernetes-list-map-keys");
        }
        _ => {}
    }
    obj.remove("x-kubernetes-list-type");
    if under_spec && obj.contains_key("properties") {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for (name, sub) in props.iter_mut() {
            translate(sub, under_spec || name == "spec");
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = obj.get_mut(key) {
            translate(sub, under_spec);
        }
    }
}

/// The committed CRD's schema, translated.
fn schema() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gossipnetwork.yaml");
    let (_, crd) = read_yaml(&path);
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    assert!(schema.is_object(), "no openAPIV3Schema in {}", path.display());
    translate(&mut schema, false);
    schema
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft4::options().build(&schema()).expect("the CRD schema compiles as JSON Schema")
}

fn schema_errors(v: &jsonschema::Validator, instance: &Value) -> Vec<(String, String)> {
    v.iter_errors(instance).map(|e| (e.instance_path().to_string(), e.to_string())).collect()
}

#[test]
fn valid_examples_pass_the_schema_and_render() {
    let v = validator();
    for path in yaml_files(&examples_dir().join("valid")) {
        let (text, value) = read_yaml(&path);
        let errors = schema_errors(&v, &value);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());

        let gn: GossipNetwork = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let config = gn.render(&[], 0).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = SidecarConfig::from_yaml(&config.to_yaml()).unwrap();
        assert_eq!(back, config, "{}", path.display());
        assert_eq!(config.markets, gn.spec.markets, "{}", path.display());
    }
}

#[test]
fn invalid_examples_are_rejected_by_the_schema_at_the_named_field() {
    let v = validator();
    for path in yaml_files(&examples_dir().join("invalid")) {
        let (text, value) = read_yaml(&path);
        let expected = expected_error(&path, &text);
        let errors = schema_errors(&v, &value);
        assert!(!errors.is_empty(), "{}: accepted by the schema", path.display());
        assert!(
            errors.iter().any(|(at, _)| at == &expected),
            "{}: expected an error at {expected}, got {errors:?}",
            path.display()
        );
    }
}

#[test]
fn operator_rejects_what_the_schema_cannot_express() {
    let v = validator();
    for path in yaml_files(&examples_dir().join("rejected-by-operator")) {
        let (text, value) = read_yaml(&path);
        let expected = expected_error(&path, &text);
        let errors = schema_errors(&v, &value);
        assert!(errors.is_empty(), "{}: the schema already rejects it: {errors:?}", path.display());
        let gn: GossipNetwork = serde_saphyr::from_str(&text).unwrap();
        let err = gn.render(&[], 0).expect_err(&format!("{}: rendered", path.display()));
        assert_eq!(err.field, expected, "{}: {err}", path.display());
    }
}

#[test]
fn schema_is_structural() {
    // What the API server requires of a CRD schema (Kubernetes "structural schema"): no
    // $ref, a type on every node, no additionalProperties next to properties, no
    // uniqueItems (sets use x-kubernetes-list-type).
    fn walk(s: &Value, at: &str) {
        let obj = s.as_object().unwrap_or_else(|| panic!("{at}: not an object"));
        for banned in ["$ref", "uniqueItems", "anyOf", "oneOf", "allOf"] {
            assert!(!obj.contains_key(banned), "{at}: has {banned}");
        }
        assert!(obj.contains_key("type"), "{at}: no type");
        assert!(
            !(obj.contains_key("properties") && obj.contains_key("additionalProperties")),
            "{at}: properties and additionalProperties"
        );
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (k, v) in props {
                walk(v, &format!("{at}.{k}"));
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = obj.get(key).filter(|v| v.is_object()) {
                walk(sub, &format!("{at}.{key}"));
            }
        }
    }
    let (_, crd) = read_yaml(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gossipnetwork.yaml"));
    walk(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "openAPIV3Schema");
}
