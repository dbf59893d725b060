use super::*;

const STACK: &str = "apiVersion: berth.dev/v1alpha1\nkind: AppStack\nmetadata: {name: shop}\nspec:\n  api:\n    image: shop:1\n    replicas: 1\n  redis: {}\n  workers:\n  - {name: render, image: w:1, queue: {type: list, name: q}}\n";
const WORKER: &str = "apiVersion: berth.dev/v1alpha1\nkind: Worker\nmetadata: {name: solo}\nspec: {image: w:1, replicas: 1, queue: {type: list, name: q, redis: {urlSecretRef: {name: r, key: url}}}}\n";

fn files(list: &[(&str, &str)]) -> Listing {
    Ok(list
        .iter()
        .map(|(f, t)| (PathBuf::from(f), Ok(t.to_string())))
        .collect())
}

fn names(r: &Resolved) -> Vec<String> {
    // The valid documents in force (invalid ones only get their Failed status).
    let mut n: Vec<String> = r
        .docs
        .iter()
        .filter(|d| d.result.is_ok())
        .map(|d| d.label())
        .collect();
    n.sort();
    n
}

fn good() -> LastGood {
    resolve(
        files(&[("m/stack.yaml", STACK), ("m/solo.yaml", WORKER)]),
        &LastGood::default(),
        false,
    )
    .last_good
}

#[test]
fn good_files_are_used_and_remembered() {
    let r = resolve(
        files(&[("m/stack.yaml", STACK)]),
        &LastGood::default(),
        false,
    );
    assert!(r.broken.is_empty() && r.hold.is_none() && r.held.is_empty());
    assert_eq!(names(&r), ["AppStack/shop"]);
    assert_eq!(r.last_good.files[Path::new("m/stack.yaml")], STACK);
}

#[test]
fn a_syntax_error_keeps_the_last_good_version_and_names_file_and_line() {
    let broken = STACK.replace("replicas: 1", "replicas: {1");
    let r = resolve(
        files(&[("m/stack.yaml", &broken), ("m/solo.yaml", WORKER)]),
        &good(),
        false,
    );
    assert_eq!(names(&r), ["AppStack/shop", "Worker/solo"]);
    assert!(r.hold.is_none());
    assert_eq!(r.broken.len(), 1);
    assert!(r.broken[0].kept);
    assert!(
        r.broken[0].errors[0].starts_with("m/stack.yaml:7: not valid YAML"),
        "{:?}",
        r.broken
    );
    // The stack and its child worker are held, with the error.
    let held: Vec<String> = r.held.keys().map(ObjectKey::label).collect();
    assert_eq!(held, ["appstack/shop", "worker/shop-render"]);
    assert!(r.held.values().all(|m| m.contains("m/stack.yaml:7")));
    // The last good text stays remembered.
    assert_eq!(r.last_good, good());
}

#[test]
fn an_invalid_field_names_its_line() {
    let bad = STACK.replace("replicas: 1", "replcas: 1");
    let r = resolve(
        files(&[("m/stack.yaml", &bad), ("m/solo.yaml", WORKER)]),
        &good(),
        false,
    );
    assert_eq!(
        r.broken[0].errors,
        ["m/stack.yaml:7: (AppStack/shop) spec.api.replcas: unknown field (did you mean replicas?)"]
    );
    // An unknown kind in a second document.
    let two = format!(
        "{STACK}---\napiVersion: berth.dev/v1alpha1\nkind: AppStak\nmetadata: {{name: x}}\n"
    );
    let r = resolve(files(&[("m/stack.yaml", &two)]), &good(), false);
    assert!(
        r.broken[0].errors[0].starts_with("m/stack.yaml:13: (AppStak/x) kind: unknown kind"),
        "{:?}",
        r.broken
    );
    assert_eq!(names(&r), ["AppStack/shop"]);
}

#[test]
fn a_deleted_file_is_gone_and_an_emptied_folder_holds_everything() {
    let r = resolve(files(&[("m/solo.yaml", WORKER)]), &good(), false);
    assert_eq!(names(&r), ["Worker/solo"]);
    assert!(r.hold.is_none());
    assert!(!r.last_good.files.contains_key(Path::new("m/stack.yaml")));

    let r = resolve(Err(FolderProblem::Empty("m".into())), &good(), false);
    assert_eq!(names(&r), ["AppStack/shop", "Worker/solo"]);
    assert!(r.hold.as_deref().unwrap().contains("--allow-empty"));
    let r = resolve(
        Err(FolderProblem::Unreadable(
            "m: no such file or directory".into(),
        )),
        &good(),
        false,
    );
    assert_eq!(names(&r), ["AppStack/shop", "Worker/solo"]);
    assert!(r.hold.is_some());

    let r = resolve(Err(FolderProblem::Empty("m".into())), &good(), true);
    assert!(r.docs.is_empty() && r.hold.is_none() && r.last_good.files.is_empty());
}

#[test]
fn an_emptied_file_is_held_but_a_comment_only_file_is_fine() {
    let r = resolve(
        files(&[("m/stack.yaml", ""), ("m/solo.yaml", WORKER)]),
        &good(),
        false,
    );
    assert_eq!(names(&r), ["AppStack/shop", "Worker/solo"]);
    assert!(r.broken[0].errors[0].contains("empty"));
    let r = resolve(
        files(&[("m/note.yaml", "# nothing\n"), ("m/solo.yaml", WORKER)]),
        &good(),
        false,
    );
    assert!(r.broken.is_empty());
    assert_eq!(names(&r), ["Worker/solo"]);
}

#[test]
fn a_broken_file_never_seen_good_holds_every_removal() {
    let broken = STACK.replace("replicas: 1", "replicas: {1");
    let r = resolve(
        files(&[("m/stack.yaml", &broken)]),
        &LastGood::default(),
        false,
    );
    assert!(!r.broken[0].kept);
    assert!(r.hold.as_deref().unwrap().contains("m/stack.yaml"));
    // An unreadable file likewise.
    let listing = Ok(vec![(
        PathBuf::from("m/x.yaml"),
        Err("cannot read: permission denied".to_string()),
    )]);
    let r = resolve(listing, &LastGood::default(), false);
    assert_eq!(
        r.broken[0].errors,
        ["m/x.yaml: cannot read: permission denied"]
    );
    assert!(r.hold.is_some());
}

#[test]
fn an_object_moved_to_a_good_file_wins_over_the_last_good_version() {
    let bad = STACK.replace("replicas: 1", "replicas: {1");
    let moved = STACK.replace("shop:1", "shop:2");
    let r = resolve(
        files(&[
            ("m/new.yaml", &moved),
            ("m/stack.yaml", &bad),
            ("m/solo.yaml", WORKER),
        ]),
        &good(),
        false,
    );
    assert_eq!(names(&r), ["AppStack/shop", "Worker/solo"]);
    let Ok(Object::AppStack(s)) = &r
        .docs
        .iter()
        .find(|d| d.kind.as_deref() == Some("AppStack"))
        .unwrap()
        .result
    else {
        panic!()
    };
    assert_eq!(s.spec.api.image, "shop:2");
}
