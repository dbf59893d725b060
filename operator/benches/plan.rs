//! `make bench-plan`: what one AppStack reconcile costs in CPU without I/O, and what the
//! operator's reflector caches cost in memory with 1,000 AppStacks and their children.
//!
//! Memory is counted by a counting global allocator (live heap bytes), so the figure is the
//! caches' own footprint, independent of the allocator's page reuse.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use berth::api::AppStack;
use berth::controller::child::{Child, Kept};
use berth::controller::{self, diff};
use berth::k8s::{build, BuildOptions, Bundle, Owner};
use berth::plan::{plan_stack, Observed};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn vidgen(name: &str, i: usize) -> AppStack {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vidgen.yaml");
    let text = std::fs::read_to_string(&path).expect("examples/vidgen.yaml");
    let mut stack: AppStack = serde_norway::from_str(&text).expect("vidgen parses");
    stack.metadata.name = Some(name.into());
    stack.metadata.namespace = Some(format!("team-{}", i % 50));
    stack.metadata.uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    stack.metadata.generation = Some(1);
    stack.metadata.resource_version = Some(format!("{}", 1000 + i));
    stack
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(iterations: usize, mut f: F) -> Duration {
    for _ in 0..iterations / 10 {
        f();
    }
    let samples = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median(samples)
}

/// Every object of a bundle as the API server would return it: stamped, with uid,
/// resourceVersion and managedFields stripped (the operator drops them from its caches).
fn served(bundle: &Bundle, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, mut v) in bundle.to_values().unwrap().into_iter().enumerate() {
        diff::stamp(&mut v);
        v["metadata"]["uid"] = json!(format!("{n:08}-0000-4000-8000-{i:012}"));
        v["metadata"]["resourceVersion"] = json!("123456");
        v["metadata"]["generation"] = json!(1);
        v["metadata"]["creationTimestamp"] = json!("2026-11-28T16:00:00Z");
        out.push(v);
    }
    out
}

fn main() {
    let opts = BuildOptions::default();
    let observed = Observed::default();
    let stack = vidgen("vidgen", 0);
    let owner = Owner::of(&stack);

    let plan_only = time(5000, || {
        black_box(plan_stack(black_box(&stack), &observed).unwrap());
    });
    let plan_build = time(5000, || {
        let plan = plan_stack(black_box(&stack), &observed).unwrap();
        black_box(build(&owner, &plan, &opts));
    });
    // What an unchanged reconcile computes besides I/O: plan, build, serialize + hash every
    // object, compare with the cached one.
    let cached = served(
        &build(&owner, &plan_stack(&stack, &observed).unwrap(), &opts),
        0,
    );
    let objects = cached.len();
    let no_write = time(2000, || {
        let plan = plan_stack(black_box(&stack), &observed).unwrap();
        let values = build(&owner, &plan, &opts).to_values().unwrap();
        for (mut v, c) in values.into_iter().zip(&cached) {
            diff::stamp(&mut v);
            assert!(diff::up_to_date(&v, c));
        }
    });

    println!("berth bench-plan (examples/vidgen.yaml: api, postgres, redis, worker, TLS, 4 routes, backup; {objects} objects)");
    println!(
        "  plan                          median {:>8.1} µs",
        plan_only.as_secs_f64() * 1e6
    );
    println!(
        "  plan + build                  median {:>8.1} µs",
        plan_build.as_secs_f64() * 1e6
    );
    println!("  plan + build + diff vs cache  median {:>8.1} µs   (an unchanged reconcile, I/O excluded)", no_write.as_secs_f64() * 1e6);

    // Memory: 1,000 AppStacks and every child in the reflector stores the controller keeps.
    const STACKS: usize = 1000;
    let inputs: Vec<(AppStack, Vec<Value>)> = (0..STACKS)
        .map(|i| {
            let s = vidgen(&format!("stack-{i}"), i);
            let plan = plan_stack(&s, &observed).unwrap();
            let values = served(&build(&Owner::of(&s), &plan, &opts), i);
            (s, values)
        })
        .collect();
    // As kept before (whole k8s-openapi objects), then as the operator keeps them now
    // (compact records, controller::cache; generated berth kinds without their labels).
    for (compact, label) in [(false, "whole children  "), (true, "compact children")] {
        let (bytes, children) = fill(&inputs, compact);
        println!(
            "  caches, {label}: {STACKS} AppStacks + {children} children  {:>6.1} MiB live heap  ({:.1} KiB per stack with its children)",
            bytes / (1024.0 * 1024.0),
            bytes / 1024.0 / STACKS as f64
        );
    }
    kinds(&inputs);
}

/// What one object of each berth kind an AppStack generates costs in its store: whole, and
/// as the operator caches it (`trim::lean_generated`: labels replaced by their digest).
fn kinds(inputs: &[(AppStack, Vec<Value>)]) {
    use kube::runtime::reflector::store;
    fn per_object<K>(values: &[Value], prepare: fn(&mut DeserializeGuard<K>)) -> f64
    where
        K: DeserializeOwned + kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let before = LIVE.load(Ordering::Relaxed);
        let (s, mut w) = store::<DeserializeGuard<K>>();
        for v in values {
            let mut o = DeserializeGuard(Ok(serde_json::from_value(v.clone()).unwrap()));
            prepare(&mut o);
            w.apply_watcher_event(&watcher::Event::Apply(o));
        }
        let after = LIVE.load(Ordering::Relaxed);
        black_box(&s);
        (after - before) as f64 / values.len() as f64
    }
    fn row<K>(inputs: &[(AppStack, Vec<Value>)])
    where
        K: DeserializeOwned + serde::Serialize + kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let kind = K::kind(&());
        let values: Vec<Value> = inputs
            .iter()
            .flat_map(|(_, vs)| vs.iter().filter(|v| v["kind"] == *kind).cloned())
            .collect();
        let whole = per_object::<K>(&values, |_| {});
        let cached = per_object::<K>(&values, controller::trim::lean_generated::<K>);
        println!(
            "  a generated {kind:<12} in its store: whole {whole:>5.0} B, as cached {cached:>5.0} B ({} objects)",
            values.len()
        );
    }
    row::<berth::api::Worker>(inputs);
    row::<berth::api::Certificate>(inputs);
    row::<berth::api::Backup>(inputs);
}

/// A watch event of a whole child.
fn whole<K: DeserializeOwned>(v: Value) -> watcher::Event<K> {
    watcher::Event::Apply(serde_json::from_value(v).unwrap())
}

/// A watch event of a child as the operator's watch delivers it to the store.
fn child<K: Kept>(v: Value) -> watcher::Event<Child<K>> {
    watcher::Event::Apply(serde_json::from_value(v).unwrap())
}

/// A watch event of a generated Worker, Certificate or Backup; as the operator caches it
/// (labels replaced by their digest) when `compact`.
fn guarded<K>(v: Value, compact: bool) -> watcher::Event<DeserializeGuard<K>>
where
    K: DeserializeOwned + serde::Serialize + kube::Resource,
{
    let mut o = DeserializeGuard(Ok(serde_json::from_value(v).unwrap()));
    if compact {
        controller::trim::lean_generated(&mut o);
    }
    watcher::Event::Apply(o)
}

/// Fills fresh stores with the stacks and their children (as compact records when
/// `compact`, else whole); the live heap they hold.
fn fill(inputs: &[(AppStack, Vec<Value>)], compact: bool) -> (f64, usize) {
    use kube::runtime::reflector::store;
    let before = LIVE.load(Ordering::Relaxed);
    let (stores, mut w) = controller::stores();
    let (stack_store, mut stack_writer) = store::<DeserializeGuard<AppStack>>();
    let (whole_stores, mut d, mut ss, mut sv, mut ing, mut np) = {
        let (a, wa) = store::<Deployment>();
        let (b, wb) = store::<StatefulSet>();
        let (c, wc) = store::<Service>();
        let (e, we) = store::<Ingress>();
        let (f, wf) = store::<NetworkPolicy>();
        ((a, b, c, e, f), wa, wb, wc, we, wf)
    };
    let mut children = 0usize;
    for (s, values) in inputs {
        stack_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(s.clone()))));
        for v in values {
            children += 1;
            let v = v.clone();
            match (v["kind"].as_str().unwrap(), compact) {
                ("Deployment", true) => w.deployments.apply_watcher_event(&child(v)),
                ("StatefulSet", true) => w.stateful_sets.apply_watcher_event(&child(v)),
                ("Service", true) => w.services.apply_watcher_event(&child(v)),
                ("Ingress", true) => w.ingresses.apply_watcher_event(&child(v)),
                ("NetworkPolicy", true) => w.network_policies.apply_watcher_event(&child(v)),
                ("Deployment", false) => d.apply_watcher_event(&whole(v)),
                ("StatefulSet", false) => ss.apply_watcher_event(&whole(v)),
                ("Service", false) => sv.apply_watcher_event(&whole(v)),
                ("Ingress", false) => ing.apply_watcher_event(&whole(v)),
                ("NetworkPolicy", false) => np.apply_watcher_event(&whole(v)),
                ("Worker", _) => w.workers.apply_watcher_event(&guarded(v, compact)),
                ("Certificate", _) => w.certificates.apply_watcher_event(&guarded(v, compact)),
                ("Backup", _) => w.backups.apply_watcher_event(&guarded(v, compact)),
                (other, _) => panic!("unexpected kind {other}"),
            }
        }
        // Generated Secrets are not cached: the controller gets them by name, once.
    }
    let after = LIVE.load(Ordering::Relaxed);
    black_box((&stores, &stack_store, &whole_stores));
    ((after - before).max(0) as f64, children)
}
