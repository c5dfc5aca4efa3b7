//! Activations and axpby: the f64 twin against known values and finite differences (every
//! activation, including across the softplus threshold and relu's kink), the GPU kernels against
//! the twin in f32 and bf16; bad input.

use snug::ops::elementwise::{activation, activation_backward, axpby, Act};
use snug::testing::{gpu_or_skip, poison, randn, rng};
use snug::{Arena, Error, Plan, Role, View, ViewMut};

const ALL: [Act; 7] = [Act::Relu, Act::GeluTanh, Act::GeluErf, Act::Silu, Act::Tanh, Act::Softplus, Act::Sigmoid];

#[test]
fn twin_matches_known_values() {
    // gelu_erf(1) = 0.5 (1 + erf(1/√2)) = 0.8413447460685429; gelu_tanh(1) = 0.8411919906082768
    // (PyTorch); softplus(0) = ln 2; silu(1) = 1/(1 + e⁻¹); gelu_erf(−3.5) in the erfc branch.
    let cases = [
        (Act::GeluErf, 1.0, 0.8413447460685429),
        (Act::GeluTanh, 1.0, 0.8411919906082768),
        (Act::Softplus, 0.0, std::f64::consts::LN_2),
        (Act::Silu, 1.0, 1.0 / (1.0 + (-1.0f64).exp())),
        (Act::Relu, -2.0, 0.0),
        (Act::Sigmoid, 0.0, 0.5),
        (Act::Tanh, 0.5, 0.46211715726000974),
        (Act::GeluErf, -3.5, -3.5 * 2.3262907903552504e-4), // x Φ(x), Φ(−3.5) from tables
        (Act::Softplus, 25.0, 25.0),
    ];
    for (a, x, want) in cases {
        let xs = [x];
        let mut y = [f64::NAN];
        activation(View::host(&xs, &[1]).unwrap(), ViewMut::host(&mut y, &[1]).unwrap(), a).unwrap();
        assert!((y[0] - want).abs() <= 1e-14 * want.abs().max(1e-3), "{a:?}({x}) = {} vs {want}", y[0]);
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = rng(1);
    let mut xs: Vec<f64> = randn(&mut r, 200, 3.0).into_iter().map(|v| v as f64).collect();
    xs.extend([19.9, 20.1, -0.3, 0.3, 4.0, -4.0]);
    let dy: Vec<f64> = randn(&mut r, xs.len(), 1.0).into_iter().map(|v| v as f64).collect();
    for a in ALL {
        let mut dx = vec![f64::NAN; xs.len()];
        activation_backward(View::host(&xs, &[xs.len()]).unwrap(), View::host(&dy, &[xs.len()]).unwrap(), ViewMut::host(&mut dx, &[xs.len()]).unwrap(), a).unwrap();
        for i in 0..xs.len() {
            if a == Act::Relu && xs[i].abs() < 1e-3 {
                continue; // the kink
            }
            let h = 1e-6;
            let fd = dy[i] * (a.f(xs[i] + h) - a.f(xs[i] - h)) / (2.0 * h);
            assert!((dx[i] - fd).abs() <= 1e-7 * (1.0 + fd.abs()), "{a:?}'({}) : {} vs {fd}", xs[i], dx[i]);
        }
    }
}

#[test]
fn axpby_and_bad_input() {
    let a = [1.0, 2.0, 3.0];
    let b = [10.0, 20.0, 30.0];
    let mut out = [0.0; 3];
    axpby(2.0, View::host(&a, &[3]).unwrap(), 0.5, Some(View::host(&b, &[3]).unwrap()), ViewMut::host(&mut out, &[3]).unwrap()).unwrap();
    assert_eq!(out, [7.0, 14.0, 21.0]);
    axpby(-1.0, View::host(&a, &[3]).unwrap(), 0.0, None, ViewMut::host(&mut out, &[3]).unwrap()).unwrap();
    assert_eq!(out, [-1.0, -2.0, -3.0]);
    let e = axpby(1.0, View::host(&a, &[3]).unwrap(), 1.0, Some(View::host(&b[..2], &[2]).unwrap()), ViewMut::host(&mut out, &[3]).unwrap());
    assert!(matches!(e, Err(Error::Shape { arg: "b", .. })), "{e:?}");
    let e = axpby(f32::NAN, View::host(&a, &[3]).unwrap(), 1.0, None, ViewMut::host(&mut out, &[3]).unwrap());
    assert!(matches!(e, Err(Error::Value { .. })), "{e:?}");
    let e = activation(View::host(&a, &[3]).unwrap(), ViewMut::host(&mut out[..2], &[2]).unwrap(), Act::Relu);
    assert!(matches!(e, Err(Error::Shape { arg: "y", .. })), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// GPU

fn gpu_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, n: usize, tol: f64) {
    let mut r = rng(7);
    let cv = |v: Vec<f32>| v.into_iter().map(|x| T::from_f32(x).unwrap()).collect::<Vec<T>>();
    let w64 = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap()).collect::<Vec<f64>>();
    let (x, dy, b) = (cv(randn(&mut r, n, 4.0)), cv(randn(&mut r, n, 1.0)), cv(randn(&mut r, n, 1.0)));
    let mut plan = Plan::new();
    let t: Vec<_> = ["x", "dy", "b", "y", "dx"].iter().map(|nm| plan.add::<T>(*nm, &[n], Role::Activation).unwrap()).collect();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(t[0], &x).unwrap();
    arena.upload(t[1], &dy).unwrap();
    arena.upload(t[2], &b).unwrap();
    let (xv, gv, bv) = (w64(&x), w64(&dy), w64(&b));
    for a in ALL {
        poison(&mut arena, t[3]).unwrap();
        poison(&mut arena, t[4]).unwrap();
        {
            let v = arena.borrow();
            activation(v.read(t[0]).unwrap(), v.write(t[3]).unwrap(), a).unwrap();
            activation_backward(v.read(t[0]).unwrap(), v.read(t[1]).unwrap(), v.write(t[4]).unwrap(), a).unwrap();
        }
        let (y, dx) = (w64(&arena.download(t[3]).unwrap()), w64(&arena.download(t[4]).unwrap()));
        for i in 0..n {
            let (wy, wd) = (a.f(xv[i]), gv[i] * a.df(xv[i]));
            assert!((y[i] - wy).abs() <= tol * wy.abs().max(1e-2), "{} {a:?} y[{i}] ({}): {} vs {wy}", T::DTYPE, xv[i], y[i]);
            // f'(x) is a difference of terms of size ~1 + |x| where it crosses zero (GELU, SiLU):
            // a few ulp of those, times dy.
            let dtol = tol * wd.abs().max(1e-2 * gv[i].abs()).max(gv[i].abs() * (1.0 + xv[i].abs()) * 2.0 * f32::EPSILON as f64 / tol);
            assert!((dx[i] - wd).abs() <= dtol, "{} {a:?} dx[{i}] ({}): {} vs {wd}", T::DTYPE, xv[i], dx[i]);
        }
    }
    poison(&mut arena, t[3]).unwrap();
    {
        let v = arena.borrow();
        axpby(1.0, v.read(t[0]).unwrap(), -0.5, Some(v.read(t[2]).unwrap()), v.write(t[3]).unwrap()).unwrap();
    }
    let y = w64(&arena.download(t[3]).unwrap());
    for i in 0..n {
        let w = xv[i] - 0.5 * bv[i];
        assert!((y[i] - w).abs() <= tol * w.abs().max(1e-2), "{} axpby[{i}]: {} vs {w}", T::DTYPE, y[i]);
    }
}

#[test]
fn gpu_matches_twin() {
    let Some(dev) = gpu_or_skip("gpu_matches_twin") else { return };
    // n not a multiple of the block; f32: a few ulp of the libm-grade device functions.
    gpu_case::<f32>(&dev, 100_003, 4e-6);
    gpu_case::<half::bf16>(&dev, 10_007, 1e-2);
}

/// One of the fifteen kernel calls: 0..7 the activations forward, 7..14 backward (`g` = dy), 14
/// axpby (`g` = b).
fn call<T: snug::Element + snug::ops::Real>(op: usize, a: View<'_, T>, g: View<'_, T>, out: ViewMut<'_, T>) {
    match op {
        0..7 => activation(a, out, ALL[op]),
        7..14 => activation_backward(a, g, out, ALL[op - 7]),
        _ => axpby(1.5, a, -0.5, Some(g), out),
    }
    .unwrap();
}

/// The kernels' paths agree bitwise: 16-byte vectors plus a scalar tail (aligned views, m not a
/// multiple of the vector width) vs the scalar loop (views one element off a 16-byte boundary, from
/// `narrow` / `split_at`), with every pointer misaligned and with only the output misaligned.
fn gpu_paths_case<T: snug::Element + snug::ops::Real>(dev: &snug::Device, m: usize) {
    let n = m - 1;
    let mut r = rng(11);
    let cv = |v: Vec<f32>| v.into_iter().map(|x| T::from_f32(x).unwrap()).collect::<Vec<T>>();
    let bits = |v: &[T]| v.iter().map(|x| x.to_f64().unwrap().to_bits()).collect::<Vec<u64>>();
    let (x, dy, b) = (cv(randn(&mut r, m, 4.0)), cv(randn(&mut r, m, 1.0)), cv(randn(&mut r, m, 1.0)));
    let mut plan = Plan::new();
    let t: Vec<_> = ["x", "dy", "b", "y", "y1"].iter().map(|nm| plan.add::<T>(*nm, &[m], Role::Activation).unwrap()).collect();
    let mut arena = Arena::new(dev, &plan).unwrap();
    arena.upload(t[0], &x).unwrap();
    arena.upload(t[1], &dy).unwrap();
    arena.upload(t[2], &b).unwrap();
    for op in 0..15 {
        let g = if op == 14 { t[2] } else { t[1] };
        poison(&mut arena, t[3]).unwrap();
        poison(&mut arena, t[4]).unwrap();
        {
            let v = arena.borrow();
            call(op, v.read(t[0]).unwrap(), v.read(g).unwrap(), v.write(t[3]).unwrap());
        }
        {
            let v = arena.borrow();
            let (_, out) = v.write(t[4]).unwrap().split_at(1).unwrap();
            call(op, v.read(t[0]).unwrap().narrow(1, n).unwrap(), v.read(g).unwrap().narrow(1, n).unwrap(), out);
        }
        let (y, y1) = (bits(&arena.download(t[3]).unwrap()), bits(&arena.download(t[4]).unwrap()));
        assert!(y[1..] == y1[1..], "{} op {op}: every view misaligned differs from the aligned run", T::DTYPE);
        poison(&mut arena, t[4]).unwrap();
        {
            let v = arena.borrow();
            let (_, out) = v.write(t[4]).unwrap().split_at(1).unwrap();
            call(op, v.read(t[0]).unwrap().narrow(0, n).unwrap(), v.read(g).unwrap().narrow(0, n).unwrap(), out);
        }
        let y1 = bits(&arena.download(t[4]).unwrap());
        assert!(y[..n] == y1[1..], "{} op {op}: the output misaligned differs from the aligned run", T::DTYPE);
    }
}

#[test]
fn gpu_vector_tail_and_scalar_paths_agree() {
    let Some(dev) = gpu_or_skip("gpu_vector_tail_and_scalar_paths_agree") else { return };
    gpu_paths_case::<f32>(&dev, 100_003); // tail 3 of 4
    gpu_paths_case::<half::bf16>(&dev, 10_007); // tail 7 of 8
    gpu_paths_case::<f32>(&dev, 3); // no vector at all
}
