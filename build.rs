//! Bakes the libtorch library folder into the binaries' run path, so they run without
//! `LD_LIBRARY_PATH` (and keeps libtorch out of `modalbench`, see below), and compiles the
//! small C++ shim over libtorch's C++ API that tch lacks (`src/train/torch_extras.cpp`:
//! autocast by device and precision, CUDA memory statistics) against the same libtorch.
//! `torch-sys` (a direct dependency for this reason) publishes the folder it linked against as
//! `DEP_TCH_LIBTORCH_LIB`.

use std::path::Path;

const SHIM: &str = "src/train/torch_extras.cpp";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed={SHIM}");
    // `sqlx::migrate!` embeds the migrations when the crate compiles
    println!("cargo:rerun-if-changed=migrations");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys publishes the libtorch folder it links against");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // `modalbench` (the service) runs no model. Its code links libtorch only through objects it
    // never calls, and the linker (rust-lld, with --gc-sections and --as-needed) drops those,
    // unless a symbol they define is exported because libtorch refers to it (template code such
    // as `std::vector<at::Tensor>`), which keeps them and with them libtorch. Not exporting the
    // archives' symbols lets it drop them: the binary starts without loading libtorch.
    println!("cargo:rustc-link-arg-bin=modalbench=-Wl,--exclude-libs=ALL");
    // libtorch's headers sit beside its `lib` folder, in the Python package and the C++ archive
    let root = Path::new(&lib)
        .parent()
        .expect("the libtorch lib folder has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(SHIM)
        .compile("modalbench_torch_extras");
}
