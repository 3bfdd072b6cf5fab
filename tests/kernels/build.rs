//! Links every test kernel with `linker.ld` when building for the bare-metal target.
use std::{env, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let linker_script = dir.join("linker.ld");
    println!("cargo:rerun-if-changed={}", linker_script.display());
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", linker_script.display());
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
