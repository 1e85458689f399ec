//! The private module registry's records: modules (`namespace/name/system`)
//! and their published versions, each naming the archive kept in the object
//! store with its SHA-256. Fetching and archiving a tag, and serving the
//! registry protocol, are the server's; this module keeps what was published.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{module_versions, modules};

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = modules)]
pub struct ModuleRow {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub system: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = module_versions)]
pub struct ModuleVersionRow {
    pub id: i64,
    pub module_id: i64,
    pub version: String,
    pub repository: String,
    pub tag: String,
    pub commit_sha: String,
    pub tree_sha: String,
    pub object_key: String,
    pub sha256: String,
    pub size: i64,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
}

/// A version about to be recorded; its archive is already in the object store.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = module_versions)]
pub struct NewModuleVersion<'a> {
    pub module_id: i64,
    pub version: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
    pub commit_sha: &'a str,
    pub tree_sha: &'a str,
    pub object_key: &'a str,
    pub sha256: &'a str,
    pub size: i64,
    pub published_by: &'a str,
}

/// The module `namespace/name/system`, when it exists.
pub async fn find(
    conn: &mut AsyncPgConnection,
    namespace: &str,
    name: &str,
    system: &str,
) -> Result<Option<ModuleRow>, StoreError> {
    Ok(modules::table
        .filter(modules::namespace.eq(namespace))
        .filter(modules::name.eq(name))
        .filter(modules::system.eq(system))
        .select(ModuleRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The module `namespace/name/system`, created when it does not exist yet.
pub async fn ensure(
    conn: &mut AsyncPgConnection,
    namespace: &str,
    name: &str,
    system: &str,
) -> Result<ModuleRow, StoreError> {
    diesel::insert_into(modules::table)
        .values((modules::namespace.eq(namespace), modules::name.eq(name), modules::system.eq(system)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    find(conn, namespace, name, system).await?.ok_or(StoreError::Query(diesel::result::Error::NotFound))
}

/// Version `version` of module `module_id`.
pub async fn version(
    conn: &mut AsyncPgConnection,
    module_id: i64,
    version: &str,
) -> Result<Option<ModuleVersionRow>, StoreError> {
    Ok(module_versions::table
        .filter(module_versions::module_id.eq(module_id))
        .filter(module_versions::version.eq(version))
        .select(ModuleVersionRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Every version of module `module_id`, in the order they were published.
pub async fn versions_of(conn: &mut AsyncPgConnection, module_id: i64) -> Result<Vec<ModuleVersionRow>, StoreError> {
    Ok(module_versions::table
        .filter(module_versions::module_id.eq(module_id))
        .order(module_versions::id.asc())
        .select(ModuleVersionRow::as_select())
        .load(conn)
        .await?)
}

/// Records a version; `None` when the module already has `version` (the
/// caller reads it and decides whether the publication is the same).
pub async fn insert_version(
    conn: &mut AsyncPgConnection,
    new: &NewModuleVersion<'_>,
) -> Result<Option<ModuleVersionRow>, StoreError> {
    Ok(diesel::insert_into(module_versions::table)
        .values(new)
        .on_conflict((module_versions::module_id, module_versions::version))
        .do_nothing()
        .returning(ModuleVersionRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Every module with its versions (in publication order), modules by address.
pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<(ModuleRow, Vec<ModuleVersionRow>)>, StoreError> {
    let all: Vec<ModuleRow> = modules::table
        .order((modules::namespace.asc(), modules::name.asc(), modules::system.asc()))
        .select(ModuleRow::as_select())
        .load(conn)
        .await?;
    let versions: Vec<ModuleVersionRow> = module_versions::table
        .order(module_versions::id.asc())
        .select(ModuleVersionRow::as_select())
        .load(conn)
        .await?;
    Ok(all
        .into_iter()
        .map(|m| {
            let vs = versions.iter().filter(|v| v.module_id == m.id).cloned().collect();
            (m, vs)
        })
        .collect())
}

/// Deletes version `version` of module `module_id`; the row deleted, if any.
/// The module itself stays, with whatever versions remain.
pub async fn delete_version(
    conn: &mut AsyncPgConnection,
    module_id: i64,
    version: &str,
) -> Result<Option<ModuleVersionRow>, StoreError> {
    Ok(diesel::delete(
        module_versions::table
            .filter(module_versions::module_id.eq(module_id))
            .filter(module_versions::version.eq(version)),
    )
    .returning(ModuleVersionRow::as_returning())
    .get_result(conn)
    .await
    .optional()?)
}
