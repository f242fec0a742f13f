//! Bakes the libtorch library folder into the binary's run path, so `modalbench` runs without
//! `LD_LIBRARY_PATH`. `torch-sys` (a direct dependency for this reason) publishes the folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB`.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
