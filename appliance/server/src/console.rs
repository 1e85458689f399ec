//! The web console's side in the server: the console crate renders pages and
//! reads the store; what only this process has — sessions resolved as API
//! tokens are, the GraphQL schema that every change goes through, the log
//! store, the live run hub and the host's facts — it gets from here.

use std::sync::Arc;

use futures::StreamExt;
use hangar_console::{Backend, OpError, Pending, SessionUser, SystemFacts};
use hangar_types::worker::Phase;
use tokio::sync::broadcast;

use crate::App;
use crate::api::{Identity, PoolDirectory};
use crate::graphql::ApiSchema;
use crate::logs::{Utf8Joiner, contiguous, fetch};
use hangar_store::users::{self, Via};
use crate::system::SystemSources;

pub(crate) struct ConsoleBackend {
    pub(crate) app: Arc<App>,
    pub(crate) schema: ApiSchema,
    pub(crate) system: SystemSources,
}

fn unavailable(detail: String) -> OpError {
    tracing::warn!(error = %detail, "console operation: the database is unavailable");
    OpError { code: "UNAVAILABLE".into(), message: "service unavailable: the database cannot be reached".into() }
}

impl Backend for ConsoleBackend {
    fn session<'a>(&'a self, token: &'a str) -> Pending<'a, Result<Option<SessionUser>, String>> {
        Box::pin(async move {
            let mut conn = self.app.db.get().await.map_err(|e| hangar_types::error_chain(&e))?;
            match users::resolve_token(&mut conn, token).await {
                // Only a login session may sit in the cookie, never an API key.
                Ok(Ok(c)) if matches!(c.via, Via::Session { .. }) => Ok(Some(SessionUser { email: c.email, role: c.role, access: c.access })),
                Ok(_) => Ok(None),
                Err(e) => Err(hangar_types::error_chain(&e)),
            }
        })
    }

    fn execute<'a>(
        &'a self,
        token: Option<&'a str>,
        query: &'a str,
        variables: serde_json::Value,
    ) -> Pending<'a, Result<serde_json::Value, OpError>> {
        Box::pin(async move {
            let caller = match token {
                None => None,
                Some(t) => {
                    let mut conn = self.app.db.get().await.map_err(|e| unavailable(hangar_types::error_chain(&e)))?;
                    match users::resolve_token(&mut conn, t).await {
                        Ok(Ok(c)) if matches!(c.via, Via::Session { .. }) => Some(c),
                        Ok(_) => {
                            return Err(OpError {
                                code: "UNAUTHENTICATED".into(),
                                message: "your session ended: sign in again".into(),
                            });
                        }
                        Err(e) => return Err(unavailable(hangar_types::error_chain(&e))),
                    }
                }
            };
            let request = async_graphql::Request::new(query)
                .variables(async_graphql::Variables::from_json(variables))
                .data(Identity(caller))
                .data(PoolDirectory::default());
            let response = self.schema.execute(request).await;
            let body = serde_json::to_value(&response).unwrap_or_default();
            if let Some(e) = body["errors"].as_array().and_then(|e| e.first()) {
                return Err(OpError {
                    code: e["extensions"]["code"].as_str().unwrap_or("INTERNAL").to_string(),
                    message: e["message"].as_str().unwrap_or("the operation failed").to_string(),
                });
            }
            Ok(body["data"].clone())
        })
    }

    fn log_text(&self, run: i64, phase: Phase, limit: usize) -> Pending<'_, Result<(String, u64), String>> {
        Box::pin(async move {
            let count = {
                let mut conn = self.app.db.get().await.map_err(|e| hangar_types::error_chain(&e))?;
                contiguous(&mut conn, run, phase, 0).await.map_err(|e| hangar_types::error_chain(&e))?.next
            };
            let mut joiner = Utf8Joiner::default();
            let mut text = String::new();
            let mut read = 0;
            let mut chunks = futures::stream::iter(0..count).map(|seq| fetch(&self.app.objects, run, phase, seq)).buffered(8);
            while let Some(bytes) = chunks.next().await {
                let bytes = bytes.map_err(|e| hangar_types::error_chain(&e))?;
                if text.len() + bytes.len() > limit {
                    text.push_str("\n[… the rest of this phase is in the raw log download]\n");
                    break;
                }
                text.push_str(&joiner.push(&bytes));
                read += 1;
            }
            text.push_str(&joiner.finish());
            // The page continues live from the chunks it holds.
            Ok((text, read))
        })
    }

    fn run_changes(&self) -> broadcast::Receiver<i64> {
        self.app.logs.run_changes()
    }

    fn system(&self) -> Pending<'_, SystemFacts> {
        Box::pin(async move {
            let mut facts = self.system.gather().await;
            if let Some(staging) = &self.app.bundles {
                facts.bundles = Some(staging.staged().await.map_err(|e| e.to_string()).map(|list| {
                    list.into_iter()
                        .map(|b| hangar_console::BundleFact {
                            applied: b.applied.map(|a| (a.applied_at, a.applied_by)),
                            upgrade: b.upgrade.map(|u| hangar_console::UpgradeFact {
                                id: u.id,
                                state: u.state,
                                requested_by: u.requested_by,
                                requested_at: u.requested_at,
                                message: u.message,
                            }),
                            id: b.id,
                            kind: b.kind,
                            version: b.version,
                            platform: b.platform,
                            size: b.size,
                            uploaded_by: b.uploaded_by,
                            uploaded_at: b.uploaded_at,
                        })
                        .collect()
                }));
                let app = self.app.clone();
                let records = tokio::task::spawn_blocking(move || {
                    app.bundles.as_ref().map(|s| crate::bundles::history(s, 10)).unwrap_or_default()
                })
                .await
                .unwrap_or_default();
                facts.upgrades = records
                    .into_iter()
                    .map(|r| hangar_console::UpgradeRecordFact {
                        steps: r.steps.iter().map(|s| s.line()).collect(),
                        id: r.id,
                        kind: r.kind,
                        from: r.from,
                        to: r.to,
                        requested_by: r.requested_by,
                        started_at: r.started_at,
                        outcome: r.outcome,
                        backup: r.backup,
                        downtime_secs: r.downtime_secs,
                        error: r.error,
                    })
                    .collect();
            }
            facts
        })
    }
}
