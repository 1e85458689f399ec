//! The API's migration and configuration sections: the tables diesel names
//! exist, the migration applies again without harm, its constraints hold, and
//! the shipped example configuration's sections are valid.

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use hangar_db::migrate;
use hangar_db::schema::{context_attachments, contexts, data_keys, sessions, variables};
use hangar_testkit::PgServer;

const UP: &str = include_str!("../../../migrations/2026-11-27-000100_api/up.sql");

#[tokio::test]
async fn tables_exist_migration_is_idempotent_and_constraints_hold() {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let mut c = pg.database().connect().await.unwrap();
    sessions::table.select(sessions::all_columns).limit(0).execute(&mut c).await.unwrap();
    contexts::table.select(contexts::all_columns).limit(0).execute(&mut c).await.unwrap();
    context_attachments::table.select(context_attachments::all_columns).limit(0).execute(&mut c).await.unwrap();
    data_keys::table.select(data_keys::all_columns).limit(0).execute(&mut c).await.unwrap();
    variables::table.select(variables::all_columns).limit(0).execute(&mut c).await.unwrap();

    // Applied by hand a second (and third) time: nothing fails, nothing changes.
    c.batch_execute(UP).await.unwrap();
    c.batch_execute(UP).await.unwrap();

    // A variable has exactly one owner, and a secret one has no clear value.
    c.batch_execute(
        "INSERT INTO stacks (slug, name, repository, branch, tool_version) VALUES ('s', 'S', 'https://x/y.git', 'main', '1.0.0');
         INSERT INTO contexts (slug, name) VALUES ('c', 'C');
         INSERT INTO data_keys (wrapped, master_key_id) VALUES ('\\x00', 'k');",
    )
    .await
    .unwrap();
    for bad in [
        "INSERT INTO variables (name, value) VALUES ('A', 'v')",
        "INSERT INTO variables (stack_id, context_id, name, value) VALUES (1, 1, 'A', 'v')",
        "INSERT INTO variables (stack_id, name, secret, value, sealed, data_key_id) VALUES (1, 'A', true, 'clear', '\\x01', 1)",
        "INSERT INTO variables (stack_id, name, secret, sealed) VALUES (1, 'A', true, '\\x01')",
        "INSERT INTO variables (stack_id, name, value) VALUES (1, 'BAD-NAME', 'v')",
        "INSERT INTO contexts (slug, name) VALUES ('Bad Slug', 'x')",
    ] {
        assert!(c.batch_execute(bad).await.is_err(), "{bad}");
    }
    c.batch_execute("INSERT INTO variables (stack_id, name, value) VALUES (1, 'A', 'v')").await.unwrap();
    assert!(c.batch_execute("INSERT INTO variables (stack_id, name, value) VALUES (1, 'A', 'again')").await.is_err());
    c.batch_execute("INSERT INTO variables (context_id, name, value) VALUES (1, 'A', 'same name, other owner')").await.unwrap();
}

#[test]
fn the_example_configuration_sections_are_valid() {
    let text = include_str!("../../config/hangar.example.toml");
    let doc: toml::Table = toml::from_str(text).unwrap();
    let server: hangar_config::ServerConfig = doc["server"].clone().try_into().unwrap();
    server.validate().unwrap();
    assert_eq!(server.listen.port(), 1983);
    let secrets: hangar_config::SecretsConfig = doc["secrets"].clone().try_into().unwrap();
    secrets.validate().unwrap();
    let objects: hangar_objects::ObjectsConfig = doc["objects"].clone().try_into().unwrap();
    objects.validate().unwrap();
    assert!(objects.endpoint.starts_with("https://") && !objects.danger_plain_http);
}
