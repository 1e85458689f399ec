//! Spaces: a tree with one root, and the roles granted in it. Stacks,
//! contexts, worker pools, VCS integrations and policies belong to one space.
//! A grant holds in its space and every space below it; a user's own role
//! (`users.role`) holds in the root, and so everywhere.
//!
//! What a caller may do is read once per request into a [`SpaceAccess`]: one
//! recursive query walks down the tree from the caller's grants, so checking a
//! space afterwards is a map lookup.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{api_keys, contexts, policies, space_grants, spaces, stacks, users, vcs_integrations, worker_pools};
use hangar_types::Role;

use crate::StoreError;

/// The root space's id; it exists from the migration on and cannot be deleted.
pub const ROOT: i64 = 1;
/// The root space's slug.
pub const ROOT_SLUG: &str = "root";

#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = spaces)]
pub struct SpaceRow {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub parent_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// What a caller may do in each space: its own role (held everywhere) and,
/// where grants raise it, the role granted there or above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceAccess {
    own: Role,
    raised: HashMap<i64, Role>,
}

impl SpaceAccess {
    /// The same role in every space.
    pub fn everywhere(role: Role) -> Self {
        SpaceAccess { own: role, raised: HashMap::new() }
    }

    /// The role held in the root, and so everywhere.
    pub fn own(&self) -> Role {
        self.own
    }

    /// The role in `space`.
    pub fn role_in(&self, space: i64) -> Role {
        self.raised.get(&space).copied().unwrap_or(self.own).max(self.own)
    }

    /// Whether the role in `space` includes `needed`.
    pub fn may(&self, space: i64, needed: Role) -> bool {
        self.role_in(space).allows(needed)
    }

    /// Whether anything of `space` may be seen: its name, its stacks, its runs.
    pub fn sees(&self, space: i64) -> bool {
        self.may(space, Role::Reader)
    }

    /// The highest role held anywhere.
    pub fn best(&self) -> Role {
        self.raised.values().copied().fold(self.own, Role::max)
    }

    /// Whether every space is seen (no filtering needed).
    pub fn sees_everything(&self) -> bool {
        self.own.allows(Role::Reader)
    }

    /// The spaces seen beyond the own role, when the own role sees none.
    pub fn seen_spaces(&self) -> Vec<i64> {
        self.raised.iter().filter(|(_, r)| r.allows(Role::Reader)).map(|(s, _)| *s).collect()
    }

    /// At most `cap` in every space.
    pub fn cap(&self, cap: Role) -> SpaceAccess {
        let own = self.own.min(cap);
        let raised = self.raised.iter().map(|(s, r)| (*s, (*r).min(cap))).filter(|(_, r)| *r > own).collect();
        SpaceAccess { own, raised }
    }

    /// The lower of two accesses in every space: an API key acts with the
    /// lower of its owner's and its own.
    pub fn meet(&self, other: &SpaceAccess) -> SpaceAccess {
        let own = self.own.min(other.own);
        let mut raised = HashMap::new();
        for space in self.raised.keys().chain(other.raised.keys()) {
            let role = self.role_in(*space).min(other.role_in(*space));
            if role > own {
                raised.insert(*space, role);
            }
        }
        SpaceAccess { own, raised }
    }
}

#[derive(QueryableByName)]
struct GrantedDown {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    role: String,
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantee {
    User(i64),
    ApiKey(i64),
}

/// Every space a grantee's grants reach (their spaces and all below), with
/// the highest role reaching each.
async fn granted(conn: &mut AsyncPgConnection, who: Grantee, own: Role) -> Result<SpaceAccess, StoreError> {
    // Nothing a grant can add to an admin of the root.
    if own == Role::Admin {
        return Ok(SpaceAccess::everywhere(own));
    }
    let (column, id) = match who {
        Grantee::User(id) => ("user_id", id),
        Grantee::ApiKey(id) => ("api_key_id", id),
    };
    let rows: Vec<GrantedDown> = diesel::sql_query(format!(
        "WITH RECURSIVE tree(id, role) AS ( \
             SELECT space_id, role FROM space_grants WHERE {column} = $1 \
             UNION ALL \
             SELECT s.id, tree.role FROM spaces s JOIN tree ON s.parent_id = tree.id \
         ) SELECT id, role FROM tree"
    ))
    .bind::<BigInt, _>(id)
    .load(conn)
    .await?;
    let mut raised: HashMap<i64, Role> = HashMap::new();
    for row in rows {
        // The column's CHECK allows only the three granted roles.
        let role = row.role.parse().unwrap_or(Role::NoAccess);
        if role > own {
            let entry = raised.entry(row.id).or_insert(role);
            *entry = (*entry).max(role);
        }
    }
    Ok(SpaceAccess { own, raised })
}

/// Callers' access kept between requests, valid for one generation of the
/// spaces tree and its grants (`access_generation`, moved by triggers in the
/// transaction that changes them). Process-wide: every request of this
/// process shares it; other processes keep their own and read the same
/// generation.
struct AccessCache {
    generation: i64,
    entries: HashMap<AccessKey, Arc<SpaceAccess>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AccessKey {
    User { user: i64, own: Role },
    Key { user: i64, user_role: Role, key: i64, key_role: Role },
}

/// More callers than this at once and the cache starts over: it holds what
/// active callers need, not every account.
const MAX_CACHED: usize = 20_000;

static CACHE: std::sync::LazyLock<std::sync::Mutex<AccessCache>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(AccessCache { generation: i64::MIN, entries: HashMap::new() }));

fn cached(key: AccessKey, generation: i64) -> Option<Arc<SpaceAccess>> {
    let cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    (cache.generation == generation).then(|| cache.entries.get(&key).cloned()).flatten()
}

fn keep(key: AccessKey, generation: i64, access: &Arc<SpaceAccess>) {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    // A request that read an older generation than another one already did
    // computes its answer but must not store it under the newer one.
    if generation < cache.generation {
        return;
    }
    if generation > cache.generation || cache.entries.len() >= MAX_CACHED {
        cache.generation = generation;
        cache.entries.clear();
    }
    cache.entries.insert(key, access.clone());
}

/// The generation of the spaces tree and grants, to read with a caller's
/// token: `(SELECT n FROM access_generation)`.
pub fn generation_column() -> diesel::expression::SqlLiteral<BigInt> {
    diesel::dsl::sql::<BigInt>("(SELECT n FROM access_generation)")
}

/// [`user_access`], kept between requests of the same `generation`.
pub async fn user_access_at(conn: &mut AsyncPgConnection, generation: i64, user: i64, own: Role) -> Result<Arc<SpaceAccess>, StoreError> {
    let key = AccessKey::User { user, own };
    if let Some(hit) = cached(key, generation) {
        return Ok(hit);
    }
    let access = Arc::new(user_access(conn, user, own).await?);
    keep(key, generation, &access);
    Ok(access)
}

/// [`key_access`], kept between requests of the same `generation`.
pub async fn key_access_at(
    conn: &mut AsyncPgConnection,
    generation: i64,
    (user, user_role): (i64, Role),
    (key, key_role): (i64, Role),
) -> Result<Arc<SpaceAccess>, StoreError> {
    let cache_key = AccessKey::Key { user, user_role, key, key_role };
    if let Some(hit) = cached(cache_key, generation) {
        return Ok(hit);
    }
    let access = Arc::new(key_access(conn, user, user_role, key, key_role).await?);
    keep(cache_key, generation, &access);
    Ok(access)
}

/// What a user may do in each space.
pub async fn user_access(conn: &mut AsyncPgConnection, user: i64, own: Role) -> Result<SpaceAccess, StoreError> {
    granted(conn, Grantee::User(user), own).await
}

/// What an API key may do in each space: its owner's access, capped by the
/// key's role everywhere, and when the key has grants of its own, only where
/// those reach.
pub async fn key_access(
    conn: &mut AsyncPgConnection,
    user: i64,
    user_role: Role,
    key: i64,
    key_role: Role,
) -> Result<SpaceAccess, StoreError> {
    let owner = granted(conn, Grantee::User(user), user_role).await?.cap(key_role);
    let own = granted(conn, Grantee::ApiKey(key), Role::NoAccess).await?;
    Ok(if own.raised.is_empty() { owner } else { owner.meet(&own) })
}

/// Every space, by slug.
pub async fn list_spaces(conn: &mut AsyncPgConnection) -> Result<Vec<SpaceRow>, StoreError> {
    Ok(spaces::table.order(spaces::slug.asc()).select(SpaceRow::as_select()).load(conn).await?)
}

pub async fn space_by_slug(conn: &mut AsyncPgConnection, slug: &str) -> Result<Option<SpaceRow>, StoreError> {
    Ok(spaces::table.filter(spaces::slug.eq(slug)).select(SpaceRow::as_select()).first(conn).await.optional()?)
}

pub async fn space_by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<SpaceRow>, StoreError> {
    Ok(spaces::table.find(id).select(SpaceRow::as_select()).first(conn).await.optional()?)
}

/// `space` and the spaces above it, nearest first, ending with the root.
pub async fn ancestors(conn: &mut AsyncPgConnection, space: i64) -> Result<Vec<i64>, StoreError> {
    #[derive(QueryableByName)]
    struct Up {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        depth: i64,
    }
    let mut rows: Vec<Up> = diesel::sql_query(
        "WITH RECURSIVE up(id, parent_id, depth) AS ( \
             SELECT id, parent_id, 0::int8 FROM spaces WHERE id = $1 \
             UNION ALL \
             SELECT s.id, s.parent_id, up.depth + 1 FROM spaces s JOIN up ON s.id = up.parent_id \
         ) SELECT id, depth FROM up",
    )
    .bind::<BigInt, _>(space)
    .load(conn)
    .await?;
    rows.sort_by_key(|r| r.depth);
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// `space` and every space below it.
pub async fn descendants(conn: &mut AsyncPgConnection, space: i64) -> Result<Vec<i64>, StoreError> {
    #[derive(QueryableByName)]
    struct Down {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let rows: Vec<Down> = diesel::sql_query(
        "WITH RECURSIVE down(id) AS ( \
             SELECT id FROM spaces WHERE id = $1 \
             UNION ALL \
             SELECT s.id FROM spaces s JOIN down ON s.parent_id = down.id \
         ) SELECT id FROM down",
    )
    .bind::<BigInt, _>(space)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Creates a space under `parent`. The slug's uniqueness is the database's.
pub async fn create_space(
    conn: &mut AsyncPgConnection,
    slug: &str,
    name: &str,
    description: &str,
    parent: i64,
) -> Result<SpaceRow, StoreError> {
    Ok(diesel::insert_into(spaces::table)
        .values((spaces::slug.eq(slug), spaces::name.eq(name), spaces::description.eq(description), spaces::parent_id.eq(parent)))
        .returning(SpaceRow::as_returning())
        .get_result(conn)
        .await?)
}

/// What keeps a space from being deleted: its child spaces and what it owns,
/// as counts by kind.
pub async fn contents(conn: &mut AsyncPgConnection, space: i64) -> Result<Vec<(&'static str, i64)>, StoreError> {
    let children: i64 = spaces::table.filter(spaces::parent_id.eq(space)).count().get_result(conn).await?;
    let stacks: i64 = stacks::table.filter(stacks::space_id.eq(space)).count().get_result(conn).await?;
    let contexts: i64 = contexts::table.filter(contexts::space_id.eq(space)).count().get_result(conn).await?;
    let pools: i64 = worker_pools::table.filter(worker_pools::space_id.eq(space)).count().get_result(conn).await?;
    let vcs: i64 = vcs_integrations::table.filter(vcs_integrations::space_id.eq(space)).count().get_result(conn).await?;
    let policies: i64 = policies::table.filter(policies::space_id.eq(space)).count().get_result(conn).await?;
    Ok([
        ("spaces", children),
        ("stacks", stacks),
        ("contexts", contexts),
        ("worker pools", pools),
        ("VCS integrations", vcs),
        ("policies", policies),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect())
}

/// Deletes an empty space (its grants go with it); false when it was not there.
pub async fn delete_space(conn: &mut AsyncPgConnection, space: i64) -> Result<bool, StoreError> {
    Ok(diesel::delete(spaces::table.find(space)).execute(conn).await? > 0)
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = space_grants)]
pub struct GrantRow {
    pub id: i64,
    pub space_id: i64,
    pub user_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub role: String,
    pub granted_by: String,
    pub created_at: DateTime<Utc>,
}

impl GrantRow {
    pub fn role(&self) -> Role {
        self.role.parse().unwrap_or(Role::NoAccess)
    }
}

/// A grant with the names of its grantee: the user's e-mail, and the key's
/// name when it is an API key's.
#[derive(Debug, Clone)]
pub struct NamedGrant {
    pub grant: GrantRow,
    pub email: String,
    pub key_name: Option<String>,
}

/// Grants `role` in `space`, replacing the grantee's earlier grant there.
pub async fn grant(
    conn: &mut AsyncPgConnection,
    space: i64,
    who: Grantee,
    role: Role,
    by: &str,
) -> Result<GrantRow, StoreError> {
    revoke(conn, space, who).await?;
    let (user, key) = match who {
        Grantee::User(id) => (Some(id), None),
        Grantee::ApiKey(id) => (None, Some(id)),
    };
    Ok(diesel::insert_into(space_grants::table)
        .values((
            space_grants::space_id.eq(space),
            space_grants::user_id.eq(user),
            space_grants::api_key_id.eq(key),
            space_grants::role.eq(role.as_str()),
            space_grants::granted_by.eq(by),
        ))
        .returning(GrantRow::as_returning())
        .get_result(conn)
        .await?)
}

/// Removes the grantee's grant in `space`; false when there was none.
pub async fn revoke(conn: &mut AsyncPgConnection, space: i64, who: Grantee) -> Result<bool, StoreError> {
    let q = space_grants::table.filter(space_grants::space_id.eq(space));
    let n = match who {
        Grantee::User(id) => diesel::delete(q.filter(space_grants::user_id.eq(id))).execute(conn).await?,
        Grantee::ApiKey(id) => diesel::delete(q.filter(space_grants::api_key_id.eq(id))).execute(conn).await?,
    };
    Ok(n > 0)
}

/// The grants made in `space` itself (not those inherited from above).
pub async fn grants_in(conn: &mut AsyncPgConnection, space: i64) -> Result<Vec<NamedGrant>, StoreError> {
    let to_users: Vec<(GrantRow, String)> = space_grants::table
        .inner_join(users::table.on(space_grants::user_id.eq(users::id.nullable())))
        .filter(space_grants::space_id.eq(space))
        .select((GrantRow::as_select(), users::email))
        .load(conn)
        .await?;
    let to_keys: Vec<(GrantRow, String, String)> = space_grants::table
        .inner_join(api_keys::table.on(space_grants::api_key_id.eq(api_keys::id.nullable())))
        .inner_join(users::table.on(api_keys::user_id.eq(users::id)))
        .filter(space_grants::space_id.eq(space))
        .select((GrantRow::as_select(), users::email, api_keys::name))
        .load(conn)
        .await?;
    let mut all: Vec<NamedGrant> = to_users
        .into_iter()
        .map(|(grant, email)| NamedGrant { grant, email, key_name: None })
        .chain(to_keys.into_iter().map(|(grant, email, key)| NamedGrant { grant, email, key_name: Some(key) }))
        .collect();
    all.sort_by(|a, b| (&a.email, &a.key_name).cmp(&(&b.email, &b.key_name)));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(own: Role, raised: &[(i64, Role)]) -> SpaceAccess {
        SpaceAccess { own, raised: raised.iter().copied().collect() }
    }

    #[test]
    fn a_grant_raises_only_where_it_reaches() {
        let a = access(Role::NoAccess, &[(7, Role::Writer)]);
        assert!(a.may(7, Role::Writer) && !a.may(7, Role::Admin));
        assert!(!a.sees(8) && !a.sees(ROOT));
        assert_eq!(a.best(), Role::Writer);
        assert!(!a.sees_everything());
        assert_eq!(a.seen_spaces(), vec![7]);
        let everywhere = SpaceAccess::everywhere(Role::Reader);
        assert!(everywhere.sees(12345) && !everywhere.may(12345, Role::Writer) && everywhere.sees_everything());
    }

    #[test]
    fn a_cap_lowers_every_space() {
        let a = access(Role::Reader, &[(2, Role::Admin), (3, Role::Writer)]).cap(Role::Writer);
        assert_eq!((a.own(), a.role_in(2), a.role_in(3), a.role_in(9)), (Role::Reader, Role::Writer, Role::Writer, Role::Reader));
        let none = access(Role::NoAccess, &[(2, Role::Admin)]).cap(Role::Reader);
        assert_eq!((none.role_in(2), none.role_in(9)), (Role::Reader, Role::NoAccess));
    }

    #[test]
    fn a_key_acts_with_the_lower_of_its_owners_access_and_its_own() {
        let owner = access(Role::Reader, &[(2, Role::Admin), (3, Role::Writer)]);
        let key = access(Role::NoAccess, &[(2, Role::Writer), (4, Role::Admin)]);
        let both = owner.meet(&key);
        assert_eq!(both.own(), Role::NoAccess);
        assert_eq!(both.role_in(2), Role::Writer);
        assert_eq!(both.role_in(3), Role::NoAccess);
        assert_eq!(both.role_in(4), Role::Reader);
        assert_eq!(both.role_in(ROOT), Role::NoAccess);
    }
}
