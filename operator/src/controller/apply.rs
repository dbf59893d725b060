//! Applying a stack's bundle (server-side apply of what differs from the caches) and pruning
//! the children that left the spec (label + controller owner uid, with uid preconditions).

use super::observe::{ChildCache, Seen};
use super::*;

pub(super) async fn apply_bundle(
    ns: &str,
    b: &Bundle,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error> {
    // Destructured without `..`: a new kind in the bundle cannot be forgotten here.
    let Bundle {
        deployments,
        stateful_sets,
        services,
        ingresses,
        network_policies,
        workers,
        certificates,
        backups,
    } = b;
    let s = &ctx.stores;
    // Services and StatefulSets first: pods of the api find their dependencies' names
    // resolvable as soon as they start waiting for them.
    apply_all(ns, stateful_sets, &s.stateful_sets, ctx, changes).await?;
    apply_all(ns, services, &s.services, ctx, changes).await?;
    apply_all(ns, deployments, &s.deployments, ctx, changes).await?;
    apply_all(ns, network_policies, &s.network_policies, ctx, changes).await?;
    apply_all(ns, ingresses, &s.ingresses, ctx, changes).await?;
    apply_all(ns, certificates, &s.certificates, ctx, changes).await?;
    apply_all(ns, workers, &s.workers, ctx, changes).await?;
    apply_all(ns, backups, &s.backups, ctx, changes).await?;
    Ok(())
}

/// Server-side applies (field manager `berth`, forced) each object that differs from the cache.
pub(super) async fn apply_all<K, C>(
    ns: &str,
    desired: &[K],
    store: &C,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
    C: ChildCache,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let kind = K::kind(&()).to_string();
    for obj in desired {
        let name = obj.name_any();
        let mut value = serde_json::to_value(obj).map_err(|source| Error::Serialize {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
        let hash = diff::stamp(&mut value);
        let key = trim::Verified::key(&kind, ns, &name);
        let cached = store.seen(ns, &name);
        let failed = |source| Error::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        let v = &ctx.verified;
        let current = match cached {
            None => false,
            Some(Seen::Whole(o)) => diff::up_to_date(&value, &o),
            Some(Seen::Digest(d)) => trim::is_current(&api, &name, v, &key, &d, &value, &hash)
                .await
                .map_err(failed)?,
        };
        if current {
            continue;
        }
        debug!(kind, name, "applying");
        ctx.metrics.writes.inc();
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await
            .map_err(failed)?;
        // What the server now holds contains `value`: its digest needs no read later.
        ctx.verified.record(key, child::digest(&applied), hash);
        changes.applied.push(format!("{kind} {name}"));
    }
    Ok(())
}

pub(super) async fn prune_bundle(
    ns: &str,
    stack: &AppStack,
    b: &Bundle,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error> {
    let Bundle {
        deployments,
        stateful_sets,
        services,
        ingresses,
        network_policies,
        workers,
        certificates,
        backups,
    } = b;
    let s = &ctx.stores;
    prune::<Worker, _, _>(ns, stack, workers, &s.workers, ctx, changes).await?;
    prune::<Backup, _, _>(ns, stack, backups, &s.backups, ctx, changes).await?;
    prune::<Certificate, _, _>(ns, stack, certificates, &s.certificates, ctx, changes).await?;
    prune::<Ingress, _, _>(ns, stack, ingresses, &s.ingresses, ctx, changes).await?;
    prune::<Deployment, _, _>(ns, stack, deployments, &s.deployments, ctx, changes).await?;
    prune::<StatefulSet, _, _>(ns, stack, stateful_sets, &s.stateful_sets, ctx, changes).await?;
    prune::<Service, _, _>(ns, stack, services, &s.services, ctx, changes).await?;
    prune::<NetworkPolicy, _, _>(
        ns,
        stack,
        network_policies,
        &s.network_policies,
        ctx,
        changes,
    )
    .await?;
    Ok(())
}

/// Children of this stack (label and controller ownerReference uid) in the cache, sorted by
/// name, that are not among `keep`.
pub fn orphans<C: ChildCache>(
    ns: &str,
    stack: &AppStack,
    store: &C,
    keep: &BTreeSet<String>,
) -> Vec<(String, Option<String>)> {
    let Some(uid) = stack.uid() else {
        return Vec::new();
    };
    let mut out = store.owned(ns, &stack.name_any(), &uid);
    out.retain(|(name, _)| !keep.contains(name));
    out.sort();
    out
}

pub(super) async fn prune<K, D, C>(
    ns: &str,
    stack: &AppStack,
    desired: &[D],
    store: &C,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
    D: Resource,
    C: ChildCache,
{
    let keep: BTreeSet<String> = desired.iter().map(|d| d.name_any()).collect();
    let candidates = orphans(ns, stack, store, &keep);
    if candidates.is_empty() {
        return Ok(());
    }
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &kube::core::ApiResource::erase::<K>(&()),
    );
    let kind = K::kind(&()).to_string();
    for (name, uid) in candidates {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            // Never delete a namesake created since the cache saw this one.
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        ctx.metrics.writes.inc();
        match api.delete(&name, &dp).await {
            Ok(_) => {
                ctx.verified.forget(&trim::Verified::key(&kind, ns, &name));
                changes.pruned.push(format!("{kind} {name}"))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(Error::Prune { kind, name, source }),
        }
    }
    Ok(())
}
