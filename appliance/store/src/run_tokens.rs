//! Run-scoped credentials: issued when a worker claims a run, accepted by the
//! state backend and the run's worker calls only while the run is not over.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_crypto::SecretString;
use hangar_db::schema::{runs, stacks};
use hangar_types::RunState;

use crate::StoreError;

/// The token kind: `hrt_<id>_<secret>`.
pub const KIND: &str = "hrt";

/// The run a presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    pub run_id: i64,
    pub stack_id: i64,
    pub stack_slug: String,
    pub state: RunState,
}

/// A new run token, for a caller that writes its id and hash with the run
/// (`hangar_db::runs::claim_ready`); [`issue`] writes them itself.
pub fn fresh() -> hangar_crypto::IssuedToken {
    hangar_crypto::new_token(KIND)
}

/// Gives `run_id` a fresh token, replacing any earlier one (a re-claimed run's
/// previous holder loses access). The token is returned this once.
pub async fn issue(conn: &mut AsyncPgConnection, run_id: i64) -> Result<SecretString, StoreError> {
    let issued = hangar_crypto::new_token(KIND);
    diesel::update(runs::table.find(run_id))
        .set((runs::run_token_id.eq(&issued.id), runs::run_token_hash.eq(&issued.hash)))
        .execute(conn)
        .await?;
    Ok(issued.token)
}

/// The run `presented` belongs to, when the token is well formed, matches the
/// stored hash and its run has not reached a terminal state.
pub async fn holder(conn: &mut AsyncPgConnection, presented: &str) -> Result<Option<TokenHolder>, StoreError> {
    let Some((KIND, id)) = hangar_crypto::token_parts(presented) else {
        return Ok(None);
    };
    let row: Option<(i64, i64, String, String, Option<String>)> = runs::table
        .inner_join(stacks::table)
        .filter(runs::run_token_id.eq(id))
        .select((runs::id, runs::stack_id, stacks::slug, runs::state, runs::run_token_hash))
        .first(conn)
        .await
        .optional()?;
    Ok(row.and_then(|(run_id, stack_id, stack_slug, state, hash)| {
        let state: RunState = state.parse().ok()?;
        let matches = hash.is_some_and(|h| hangar_crypto::token_matches(presented, &h));
        (matches && !state.is_terminal()).then_some(TokenHolder { run_id, stack_id, stack_slug, state })
    }))
}
