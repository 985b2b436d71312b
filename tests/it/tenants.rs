//! Tenancy: a token's tenant is the namespace of its calls. Tenant B's callers, with every scope, attempt at
//! least 10,000 times to read, overwrite or invalidate tenant A's entries — the same keys, GetMany, selectors
//! by type / object / user / project, glob patterns built to escape (`*`, `*:*`, A's base, escaped separators,
//! bucket tags, percent escapes), `all` — on the memory tier and on Redis (hybrid), and a non-admin token asks
//! for Metrics: 0 successes, and every entry of A is intact afterwards. A client certificate's subject maps to
//! its tenant the same way.

use cache_proto::pb;
use cache_proto::pb::cache_service_client::CacheServiceClient;
use cache_proto::pb::invalidate_request::Target;
use cache_tests::{
    RedisServer, ServerProcess, Token, bearer, export_key, get_req, key, set_req, tokens_toml,
    write_atomically,
};
use tonic::transport::Channel;

const A: &str = "tenant-a-token-41f0";
const B: &str = "tenant-b-token-93c2";
const B_READER: &str = "tenant-b-reader-77d1";

fn tokens() -> String {
    let all: &[&str] = &["read", "write", "invalidate", "admin"];
    tokens_toml(&[
        Token::bearer("a", A, "a", all),
        Token::bearer("b", B, "b", all),
        Token::bearer("b-reader", B_READER, "b", &["read"]),
    ])
}

/// Tenant A's entries: every type, scoped and not.
fn entries() -> Vec<(pb::CacheKey, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..8 {
        let id = format!("obj-{i}");
        let mut scoped = key(pb::CacheType::ObjectInfo, &id);
        scoped.user_id = format!("u{i}");
        scoped.project_id = "p".into();
        let mut pref = key(pb::CacheType::UserPreference, &format!("theme-{i}"));
        pref.user_id = format!("u{i}");
        for k in [
            key(pb::CacheType::Metadata, &id),
            scoped,
            pref,
            key(pb::CacheType::SystemConfig, &id),
            export_key(&id, "json", serde_json::json!({"lod": i}), "u1", "p"),
        ] {
            let value = format!("A's secret value of {k:?}").into_bytes();
            out.push((k, value));
        }
    }
    out
}

const PATTERNS: &[&str] = &[
    "*",
    "*:*",
    "**",
    "?*",
    "[a-z]*",
    "cache:a:*",
    "cache:*",
    "cache:a:{*}*",
    "{*}*",
    "*\\:*",
    "\\*",
    "cache%3Aa*",
    "%2A",
    "..*",
    "*a*",
    "metadata:*",
    "*obj-1*",
    "cache:b:*:cache:a:*",
    "cache:b:\\",
    "cache:b:\\\\*",
];

fn selectors() -> Vec<pb::Selector> {
    let mut out = Vec::new();
    for t in 1..=5 {
        out.push(pb::Selector {
            r#type: t,
            ..Default::default()
        });
    }
    for i in 0..8 {
        out.push(pb::Selector {
            object_id: format!("obj-{i}"),
            ..Default::default()
        });
        out.push(pb::Selector {
            user_id: format!("u{i}"),
            ..Default::default()
        });
    }
    out.push(pb::Selector {
        project_id: "p".into(),
        ..Default::default()
    });
    out
}

/// Runs the attempts and returns (attempts, successes).
async fn attack(client: &mut CacheServiceClient<Channel>, minimum: usize) -> (usize, usize) {
    let victims = entries();
    let selectors = selectors();
    let mut attempts = 0;
    let mut successes = 0;
    let mut round = 0;
    while attempts < minimum {
        // Reads of the same keys: misses.
        for (k, value) in &victims {
            attempts += 1;
            let got = client
                .get(bearer(get_req(k.clone()), B))
                .await
                .unwrap()
                .into_inner();
            if got.found || got.value == *value {
                successes += 1;
            }
        }
        attempts += 1;
        let many = client
            .get_many(bearer(
                pb::GetManyRequest {
                    requests: victims.iter().map(|(k, _)| get_req(k.clone())).collect(),
                },
                B,
            ))
            .await
            .unwrap()
            .into_inner();
        successes += many.responses.iter().filter(|r| r.found).count();
        // Invalidations of every kind: nothing of B's exists, so anything removed would be A's.
        let mut targets: Vec<Target> = Vec::new();
        targets.extend(victims.iter().map(|(k, _)| Target::Key(k.clone())));
        targets.extend(selectors.iter().cloned().map(Target::Selector));
        targets.extend(PATTERNS.iter().map(|p| Target::Pattern((*p).to_owned())));
        targets.push(Target::All(true));
        for target in targets {
            attempts += 1;
            match client
                .invalidate(bearer(
                    pb::InvalidateRequest {
                        target: Some(target.clone()),
                    },
                    B,
                ))
                .await
            {
                Ok(r) if r.get_ref().invalidated > 0 => successes += 1,
                Ok(_) => {}
                // A pattern refused as invalid reached nothing either.
                Err(s) if s.code() == tonic::Code::InvalidArgument => {}
                Err(s) => panic!("{target:?}: {s:?}"),
            }
        }
        // Metrics without admin.
        attempts += 1;
        if client
            .metrics(bearer(pb::MetricsRequest {}, B_READER))
            .await
            .is_ok()
        {
            successes += 1;
        }
        // Every few rounds B writes the same keys (its own entries), reads them back as its own, and removes
        // them with `all`: A's stay A's.
        if round % 10 == 0 {
            for (k, _) in &victims {
                attempts += 1;
                client
                    .set(bearer(set_req(k.clone(), &b"B's value"[..]), B))
                    .await
                    .unwrap();
            }
            for (k, value) in &victims {
                attempts += 1;
                let got = client
                    .get(bearer(get_req(k.clone()), B))
                    .await
                    .unwrap()
                    .into_inner();
                if got.value == *value {
                    successes += 1;
                }
            }
            let removed = client
                .invalidate(bearer(
                    pb::InvalidateRequest {
                        target: Some(Target::All(true)),
                    },
                    B,
                ))
                .await
                .unwrap()
                .into_inner()
                .invalidated;
            assert_eq!(
                removed as usize,
                victims.len(),
                "B's all removed exactly B's entries"
            );
        }
        round += 1;
    }
    (attempts, successes)
}

async fn a_is_intact(client: &mut CacheServiceClient<Channel>) {
    for (k, value) in entries() {
        let got = client
            .get(bearer(get_req(k.clone()), A))
            .await
            .unwrap()
            .into_inner();
        assert!(got.found, "A lost {k:?}");
        assert_eq!(got.value, value);
    }
}

async fn cross_tenant_suite(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    write_atomically(&file, &tokens());
    let file = file.display().to_string();
    let mut env = env.to_vec();
    env.push(("CACHE_AUTH_TOKENS_FILE", &file));
    let server = ServerProcess::start(&env, &[]).await;
    let mut client = server.client().await;
    for (k, value) in entries() {
        client.set(bearer(set_req(k, value), A)).await.unwrap();
    }
    a_is_intact(&mut client).await;
    let started = std::time::Instant::now();
    let (attempts, successes) = attack(&mut client, 10_000).await;
    eprintln!(
        "cross-tenant ({}): {attempts} attempts in {:?}, {successes} successes",
        env[0].1,
        started.elapsed()
    );
    assert!(attempts >= 10_000);
    assert_eq!(successes, 0, "tenant B reached tenant A's entries");
    a_is_intact(&mut client).await;
    // And A's own `all` does remove A's entries: the suite was not blind.
    let removed = client
        .invalidate(bearer(
            pb::InvalidateRequest {
                target: Some(Target::All(true)),
            },
            A,
        ))
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(removed as usize, entries().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_reaches_tenant_a_in_memory() {
    cross_tenant_suite(&[("CACHE_BACKEND", "memory")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_reaches_tenant_a_on_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    cross_tenant_suite(&[("CACHE_BACKEND", "hybrid"), ("REDIS_URL", &url)]).await;
    // Every key of the service lives under a tenant's base.
    let keys = redis.cli(["--scan", "--pattern", "*"]);
    for k in keys.lines() {
        assert!(
            k.starts_with("cache:a:{") || k.starts_with("cache:b:{"),
            "a key outside the tenants' keyspaces: {k}"
        );
    }
}
