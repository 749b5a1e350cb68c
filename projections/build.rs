//! `sqlx::migrate!` embeds `migrations/` at compile time but does not tell
//! cargo to look there: without this, a new migration is missed by an
//! incremental build.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
