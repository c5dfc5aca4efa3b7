//! The committed launch-parameter bindings (src/ffi/bindings.rs) must be what bindgen generates
//! from kernels/*.h today. build.rs regenerates them into OUT_DIR whenever libclang is at hand
//! (empty otherwise); both texts are embedded at compile time, so the check needs no source tree
//! at run time (the GPU bundle runs it elsewhere). Without libclang this test says so and passes,
//! unless SNUG_REQUIRE_KERNELS=1 (scripts/test, which installs a pinned libclang with the CUDA
//! toolchain).

const FRESH: &str = include_str!(concat!(env!("OUT_DIR"), "/ffi.rs"));
const COMMITTED: &str = include_str!("../src/ffi/bindings.rs");

fn normalize(s: &str) -> String {
    s.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn committed_bindings_match_the_headers() {
    if FRESH.is_empty() {
        let why = env!("SNUG_FFI_SKIPPED");
        assert!(
            !std::env::var("SNUG_REQUIRE_KERNELS").is_ok_and(|v| v == "1"),
            "SNUG_REQUIRE_KERNELS=1 but the bindings could not be regenerated: {why}"
        );
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "committed_bindings_match_the_headers: skipped: {why}");
        return;
    }
    assert!(
        normalize(FRESH) == normalize(COMMITTED),
        "src/ffi/bindings.rs is stale: kernels/*.h changed. Run scripts/regen-bindings"
    );
}
