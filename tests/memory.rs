//! Plan layout, alignment, aliasing and out-of-range checks of the arena (host and, when a GPU
//! is at hand, device).

use snug::testing::gpu_or_skip;
use snug::{Arena, Device, Error, Plan, Role, ALIGN};

#[test]
fn offsets_are_aligned_ordered_and_disjoint() {
    let mut plan = Plan::new();
    let shapes: [&[usize]; 5] = [&[3], &[64, 64], &[1], &[7, 5, 3], &[257]];
    plan.add::<f32>("a", shapes[0], Role::Param).unwrap();
    plan.add::<half::bf16>("b", shapes[1], Role::Activation).unwrap();
    plan.add::<u8>("c", shapes[2], Role::Io).unwrap();
    plan.add::<f64>("d", shapes[3], Role::Saved).unwrap();
    plan.add::<i32>("e", shapes[4], Role::Workspace).unwrap();
    let bufs = plan.buffers();
    let sizes = [4, 2, 1, 8, 4];
    let mut end = 0;
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b.offset % ALIGN, 0, "{} misaligned", b.name);
        assert!(b.offset >= end, "{} overlaps the previous buffer", b.name);
        assert!(b.offset < end + ALIGN || end == 0, "{} leaves more than alignment padding", b.name);
        assert_eq!(b.bytes, shapes[i].iter().product::<usize>() * sizes[i]);
        end = b.offset + b.bytes;
    }
    assert_eq!(plan.total_bytes() % ALIGN, 0);
    assert!(plan.total_bytes() >= end && plan.total_bytes() < end + ALIGN);
    let by_role: std::collections::HashMap<_, _> = plan.bytes_by_role().into_iter().collect();
    assert_eq!(by_role[&Role::Param], 12);
    assert_eq!(by_role[&Role::Activation], 64 * 64 * 2);
    assert_eq!(by_role[&Role::Grad], 0);
    // The table names every buffer and the total.
    let table = plan.to_string();
    for b in bufs {
        assert!(table.contains(&b.name));
    }
    assert!(table.contains(&plan.total_bytes().to_string()));
}

#[test]
fn plan_rejects_bad_buffers() {
    let mut plan = Plan::new();
    plan.add::<f32>("w", &[4], Role::Param).unwrap();
    assert!(matches!(plan.add::<f32>("w", &[4], Role::Param), Err(Error::Plan(m)) if m.contains("already")));
    assert!(matches!(plan.add::<f32>("", &[4], Role::Param), Err(Error::Plan(_))));
    assert!(matches!(plan.add::<f32>("z", &[4, 0], Role::Param), Err(Error::Plan(m)) if m.contains("at least 1")));
    assert!(matches!(plan.add::<f32>("huge", &[usize::MAX / 2, 3], Role::Param), Err(Error::Plan(_))));
    assert!(matches!(plan.add::<f32>("huge2", &[usize::MAX / 4 + 1], Role::Param), Err(Error::Plan(_))));
    assert!(matches!(plan.add::<f32>("rank9", &[1; 9], Role::Param), Err(Error::Plan(_))));
    // Failed adds leave the plan as it was.
    assert_eq!(plan.buffers().len(), 1);
    assert_eq!(plan.total_bytes(), ALIGN);
    assert!(plan.find::<f32>("w").is_ok());
    assert!(matches!(plan.find::<f64>("w"), Err(Error::DType { .. })));
    assert!(matches!(plan.find::<f32>("nope"), Err(Error::Plan(_))));
}

#[test]
fn one_host_allocation_aligned_and_zeroed() {
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[5], Role::Param).unwrap();
    let b = plan.add::<f32>("b", &[300], Role::Grad).unwrap();
    let arena = Arena::new(&Device::Cpu, &plan).unwrap();
    assert_eq!(arena.total_bytes(), plan.total_bytes());
    let va = arena.view(a).unwrap();
    let vb = arena.view(b).unwrap();
    let pa = va.as_slice().unwrap().as_ptr() as usize;
    let pb = vb.as_slice().unwrap().as_ptr() as usize;
    assert_eq!(pa % ALIGN, 0);
    assert_eq!(pb - pa, plan.buffers()[1].offset);
    assert!(va.as_slice().unwrap().iter().chain(vb.as_slice().unwrap()).all(|&x| x == 0.0));
    assert_eq!(va.device_ptr(), None);
}

#[test]
fn views_never_alias_a_mutable_view() {
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[8], Role::Param).unwrap();
    let b = plan.add::<half::bf16>("b", &[8], Role::Param).unwrap();
    let mut arena = Arena::new(&Device::Cpu, &plan).unwrap();
    {
        let bw = arena.borrow();
        let _r1 = bw.read(a).unwrap();
        let _r2 = bw.read(a).unwrap(); // shared views may overlap
        assert!(matches!(bw.write(a), Err(Error::Aliased { .. })));
        let _w = bw.write(b).unwrap();
        assert!(matches!(bw.read(b), Err(Error::Aliased { .. })));
        assert!(matches!(bw.write(b), Err(Error::Aliased { first, second }) if first == "b" && second == "b"));
    }
    assert!(matches!(arena.views_mut([a, a]), Err(Error::Aliased { .. })));
    let [mut x] = arena.views_mut([a]).unwrap();
    x.as_slice_mut().unwrap()[3] = 2.5;
    assert_eq!(arena.download(a).unwrap()[3], 2.5);
}

#[test]
fn ids_from_elsewhere_are_refused() {
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[8], Role::Param).unwrap();
    let mut other = Plan::new();
    let foreign = other.add::<f32>("a", &[8], Role::Param).unwrap();
    let arena = Arena::new(&Device::Cpu, &plan).unwrap();
    assert!(matches!(arena.view(foreign), Err(Error::Arena(m)) if m.contains("another plan")));
    // A buffer added after the arena was made lies outside it: refused, never a view past the end.
    let late = plan.add::<f32>("late", &[1 << 20], Role::Activation).unwrap();
    assert!(matches!(arena.view(late), Err(Error::Arena(m)) if m.contains("not in this plan")));
    assert!(arena.view(a).is_ok());
    assert!(arena.download(late).is_err());
}

#[test]
fn upload_download_fill_and_zero() {
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[3], Role::Grad).unwrap();
    let b = plan.add::<half::bf16>("b", &[2], Role::Grad).unwrap();
    let c = plan.add::<f32>("c", &[2], Role::Param).unwrap();
    let mut arena = Arena::new(&Device::Cpu, &plan).unwrap();
    assert!(matches!(arena.upload(a, &[1.0, 2.0]), Err(Error::Length { got: 2, .. })));
    arena.upload(a, &[1.0, 2.0, 3.0]).unwrap();
    arena.upload(c, &[4.0, 5.0]).unwrap();
    assert_eq!(arena.download(a).unwrap(), vec![1.0, 2.0, 3.0]);
    snug::testing::poison(&mut arena, b).unwrap();
    assert!(arena.download(b).unwrap().iter().all(|x| x.is_nan()));
    arena.zero_role(Role::Grad).unwrap();
    assert_eq!(arena.download(a).unwrap(), vec![0.0; 3]);
    assert!(arena.download(b).unwrap().iter().all(|x| x.to_f32() == 0.0));
    assert_eq!(arena.download(c).unwrap(), vec![4.0, 5.0]);
}

#[test]
fn host_views_check_their_shape() {
    let data = vec![0.0f32; 6];
    assert!(snug::View::host(&data, &[2, 3]).is_ok());
    assert!(matches!(snug::View::host(&data, &[4, 2]), Err(Error::Length { .. })));
    let v = snug::View::host(&data, &[6]).unwrap();
    assert!(v.clone().reshape(&[3, 2]).is_ok());
    assert!(v.reshape(&[5]).is_err());
}

#[test]
fn empty_plan_gives_a_valid_arena() {
    let plan = Plan::new();
    let arena = Arena::new(&Device::Cpu, &plan).unwrap();
    assert_eq!(arena.total_bytes(), 0);
}

#[test]
fn gpu_arena_is_one_allocation_with_checked_views() {
    let Some(dev) = gpu_or_skip("gpu_arena_is_one_allocation_with_checked_views") else { return };
    let mut plan = Plan::new();
    let a = plan.add::<f32>("a", &[1000], Role::Param).unwrap();
    let b = plan.add::<half::bf16>("b", &[333], Role::Activation).unwrap();
    // Large enough that the driver maps fresh pages for it (small allocations may land in pages
    // the context already holds, and then free memory does not move).
    plan.add::<u8>("bulk", &[(64 << 20) + 12345], Role::Workspace).unwrap();
    let (mut arena, measured) = snug::bench::measure_arena(&dev, &plan).unwrap();
    let planned = plan.total_bytes();
    let measured = measured.unwrap();
    // The driver maps whole pages (2 MiB): the drop in free memory is the plan rounded up to one.
    // (Run GPU tests one at a time — the bundle does — so no other test allocates meanwhile.)
    assert!(measured >= planned && measured <= planned + (2 << 20), "planned {planned}, free memory dropped by {measured}");
    let pa = arena.view(a).unwrap().device_ptr().unwrap();
    let pb = arena.view(b).unwrap().device_ptr().unwrap();
    assert_eq!(pa % ALIGN as u64, 0);
    assert_eq!(pb - pa, plan.buffers()[1].offset as u64);
    assert!(arena.download(a).unwrap().iter().all(|&x| x == 0.0));
    let data: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    arena.upload(a, &data).unwrap();
    assert_eq!(arena.download(a).unwrap(), data);
    snug::testing::poison(&mut arena, b).unwrap();
    assert!(arena.download(b).unwrap().iter().all(|x| x.is_nan()));
    let bw = arena.borrow();
    let _w = bw.write(a).unwrap();
    assert!(matches!(bw.read(a), Err(Error::Aliased { .. })));
}

#[test]
fn gpu_out_of_memory_is_a_typed_error() {
    let Some(dev) = gpu_or_skip("gpu_out_of_memory_is_a_typed_error") else { return };
    let mut plan = Plan::new();
    let total = dev.gpu().unwrap().memory_info().unwrap().1;
    plan.add::<u8>("too_big", &[total + (1 << 30)], Role::Workspace).unwrap();
    assert!(matches!(Arena::new(&dev, &plan), Err(Error::OutOfMemory { .. })));
}
