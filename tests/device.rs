//! Opening devices never panics, and says why there is no GPU.

use snug::{device, Device, Error};

#[test]
fn opening_cuda_returns_a_device_or_a_typed_error() {
    match Device::cuda(0) {
        Ok(d) => {
            assert_eq!(d.to_string(), "cuda:0");
            let g = d.gpu().unwrap();
            assert!(g.sm_count().unwrap() >= 1);
            assert!(g.name().unwrap().len() > 1);
        }
        Err(Error::NoCuda(why)) => assert!(!device::driver_present(), "driver present but NoCuda: {why}"),
        Err(Error::NoDevice { ordinal: 0, .. }) => {}
        Err(e) => panic!("unexpected error opening cuda:0: {e}"),
    }
}

#[test]
fn an_absent_ordinal_is_no_device() {
    match Device::cuda(1 << 20) {
        Err(Error::NoDevice { ordinal, .. }) => assert_eq!(ordinal, 1 << 20),
        Err(Error::NoCuda(_)) => assert!(!device::driver_present()),
        other => panic!("expected NoDevice or NoCuda, got {other:?}"),
    }
}

#[test]
fn device_listing_agrees_with_the_count() {
    match (device::cuda_device_count(), device::cuda_devices()) {
        (Ok(n), Ok(list)) => assert_eq!(n, list.len()),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("count {a:?} vs list {b:?}"),
    }
}

#[test]
fn cpu_device_is_always_there() {
    let d = Device::Cpu;
    assert!(d.gpu().is_none());
    d.synchronize().unwrap();
    assert!(d.same(&Device::Cpu));
}

#[test]
fn gpu_kernels_load_from_the_embedded_fatbins() {
    let Some(dev) = snug::testing::gpu_or_skip("gpu_kernels_load_from_the_embedded_fatbins") else { return };
    let g = dev.gpu().unwrap();
    for m in snug::kernels::modules() {
        for k in m.kernels {
            g.function("test", m.name, k.name).unwrap_or_else(|e| panic!("{}::{}: {e}", m.name, k.name));
        }
    }
    // A second handle has its own stream; views from the two cannot be mixed.
    let dev2 = Device::cuda(0).unwrap();
    assert!(!dev.same(&dev2));
    g.cublas().unwrap();
}
