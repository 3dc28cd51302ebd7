//! Shared helpers for the integration tests: fixture paths and tensor comparison that reports the
//! max absolute and relative error per tensor.
#![allow(dead_code)]

use std::path::PathBuf;

use cda_engine::weights::{read_tensor_file, Tensor, TensorFile};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn load(rel: &str) -> TensorFile {
    read_tensor_file(&fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

pub fn tensor<'a>(f: &'a TensorFile, name: &str) -> &'a Tensor {
    f.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor {name}", f.path.display()))
}

#[derive(Debug, Clone, Copy)]
pub struct Diff {
    pub max_abs: f64,
    /// max |got - want| / max |want|: the error relative to the tensor's scale.
    pub rel_to_scale: f64,
    /// max over elements of |got - want| / |want| (elements with |want| > 1e-3 * scale only).
    pub max_rel: f64,
}

pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f64, |m, &v| m.max((v as f64).abs())).max(1e-30);
    let mut max_abs = 0f64;
    let mut max_rel = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        if !g.is_finite() {
            return Diff { max_abs: f64::INFINITY, rel_to_scale: f64::INFINITY, max_rel: f64::INFINITY };
        }
        let d = (g - w).abs();
        max_abs = max_abs.max(d);
        if w.abs() > 1e-3 * scale {
            max_rel = max_rel.max(d / w.abs());
        }
    }
    Diff { max_abs, rel_to_scale: max_abs / scale, max_rel }
}

/// Asserts `got` matches `want` to `tol` relative to the tensor's scale (max |want|); prints the errors.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) -> Diff {
    let d = diff(got, want);
    println!("{what:<48} max_abs {:.3e}  rel_to_scale {:.3e}  max_rel {:.3e}", d.max_abs, d.rel_to_scale, d.max_rel);
    assert!(
        d.rel_to_scale <= tol,
        "{what}: max abs error {:.3e} is {:.3e} of the tensor's scale (tolerance {tol:.1e}); max elementwise rel {:.3e}",
        d.max_abs,
        d.rel_to_scale,
        d.max_rel
    );
    d
}
