//! Rebuilds when a migration is added: `embed_migrations!` does not track new files.
fn main() {
    println!("cargo:rerun-if-changed=failing-migrations");
}
