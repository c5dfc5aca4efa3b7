//! The committed launch-parameter bindings (src/ffi/bindings.rs) must be what bindgen generates
//! from kernels/*.h today. build.rs regenerates them into OUT_DIR whenever libclang is at hand;
//! without libclang this test says so and passes, unless SNUG_REQUIRE_KERNELS=1 (scripts/test),
//! which installs a pinned libclang with the CUDA toolchain.

fn normalize(s: &str) -> String {
    s.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn committed_bindings_match_the_headers() {
    let generated = env!("SNUG_FFI_GENERATED");
    if generated.is_empty() {
        let why = env!("SNUG_FFI_SKIPPED");
        assert!(
            !std::env::var("SNUG_REQUIRE_KERNELS").is_ok_and(|v| v == "1"),
            "SNUG_REQUIRE_KERNELS=1 but the bindings could not be regenerated: {why}"
        );
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "committed_bindings_match_the_headers: skipped: {why}");
        return;
    }
    let fresh = std::fs::read_to_string(generated).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ffi/bindings.rs")).unwrap();
    assert!(
        normalize(&fresh) == normalize(&committed),
        "src/ffi/bindings.rs is stale: kernels/*.h changed. Run scripts/regen-bindings (fresh output: {generated})"
    );
}
