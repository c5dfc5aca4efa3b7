//! `snug info`: human and JSON reports of the build, the kernels and the devices.

use std::process::Command;

fn info(args: &[&str]) -> String {
    // $SNUG_BIN: the bundled binary when the GPU bundle runs this test away from the build tree.
    let bin = std::env::var("SNUG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_snug").to_string());
    let out = Command::new(bin).arg("info").args(args).output().unwrap();
    assert!(out.status.success(), "snug info {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn info_json_lists_every_kernel_with_its_ptxas_figures() {
    let v: serde_json::Value = serde_json::from_str(&info(&["--json"])).unwrap();
    assert_eq!(v["version"], snug::VERSION);
    assert_eq!(v["kernels_compiled"], snug::kernels::compiled());
    // Devices: a list, with an error string when there are none.
    assert!(v["cuda"]["devices"].is_array());
    if v["cuda"]["devices"].as_array().unwrap().is_empty() {
        assert!(v["cuda"]["error"].is_string() || snug::device::cuda_device_count().is_ok_and(|n| n == 0));
    }
    if !snug::kernels::compiled() {
        return;
    }
    let rows = v["kernels"].as_array().unwrap();
    let adamw = rows.iter().find(|r| r["kernel"] == "adamw_f32").expect("adamw_f32 listed");
    assert_eq!(adamw["module"], "adamw");
    assert_eq!(adamw["spill_bytes"], 0);
    assert!(adamw["max_registers"].as_u64().unwrap() > 0);
    let archs: Vec<u64> = v["archs"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect();
    assert_eq!(adamw["registers_by_arch"].as_object().unwrap().len(), archs.len());
}

#[test]
fn info_text_names_kernels_archs_and_devices() {
    let text = info(&[]);
    assert!(text.starts_with(&format!("snug {}", snug::VERSION)));
    assert!(text.contains("CUDA devices") || text.contains("cuda:0"));
    if snug::kernels::compiled() {
        assert!(text.contains("adamw_f32"));
        assert!(text.contains(&format!("sm_{}", snug::kernels::archs()[0])));
        assert!(text.contains("PTX compute_"));
    } else {
        assert!(text.contains("NOT compiled"));
    }
}
