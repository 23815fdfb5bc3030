//! Bundles GraphiQL from npm at build time (`http/graphiql/`): `npm ci` when the lock file is
//! newer than the installed packages, then esbuild writes `graphiql.js` and `graphiql.css`
//! into `OUT_DIR`, which `graphql::graphiql` embeds. Needs Node.js and npm (and the npm
//! registry on the first build); nothing is fetched when the page is served.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let app = manifest_dir.join("graphiql");
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("graphiql");
    for input in [
        "package.json",
        "package-lock.json",
        "main.jsx",
        "page.css",
        "build.mjs",
    ] {
        println!("cargo:rerun-if-changed=graphiql/{input}");
    }
    // Two builds at once (clippy beside an editor's check) must not both run `npm ci`.
    let lock =
        std::fs::File::create(app.join(".build.lock")).expect("creating graphiql/.build.lock");
    lock.lock().expect("locking graphiql/.build.lock");
    if !installed_matches_lock(&app) {
        run(
            Command::new("npm")
                .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
                .current_dir(&app),
            "npm ci (installs GraphiQL's packages from the npm registry)",
        );
    }
    std::fs::create_dir_all(&out_dir).expect("creating OUT_DIR/graphiql");
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(&out_dir)
            .current_dir(&app),
        "node build.mjs (bundles GraphiQL with esbuild)",
    );
}

/// npm writes `node_modules/.package-lock.json` on every install: newer than the lock file
/// means the installed packages are the locked ones.
fn installed_matches_lock(app: &Path) -> bool {
    let modified = |path: PathBuf| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    match (
        modified(app.join("node_modules/.package-lock.json")),
        modified(app.join("package-lock.json")),
    ) {
        (Some(installed), Some(locked)) => installed >= locked,
        _ => false,
    }
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "{what} failed ({status}); GraphiQL is bundled at build time, see http/graphiql/"
        ),
        Err(error) => panic!(
            "{what} could not start ({error}): building medflow needs Node.js and npm to bundle GraphiQL (http/graphiql/)"
        ),
    }
}
