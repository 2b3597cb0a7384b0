//! The small dense linear algebra of the posterior: Cholesky factorisation, solves and
//! quadratic forms. Hand-written because the dimensions are tiny and fixed (at most
//! `1 + 2·MAX_SLOTS`) and a prediction must allocate nothing.

use super::MAX_DIM;

/// Writes to `lower` the lower Cholesky factor of the symmetric positive definite
/// `dim × dim` matrix whose cell `(i, j)` is `matrix(i, j)`; false when a pivot is not
/// positive.
pub(super) fn cholesky_into(
    lower: &mut Vec<f64>,
    dim: usize,
    matrix: impl Fn(usize, usize) -> f64,
) -> bool {
    lower.clear();
    lower.resize(dim * dim, 0.0);
    for i in 0..dim {
        for j in 0..=i {
            let partial: f64 = (0..j)
                .map(|k| lower[i * dim + k] * lower[j * dim + k])
                .sum();
            let value = matrix(i, j) - partial;
            if i == j {
                if value.is_nan() || value <= 0.0 || !value.is_finite() {
                    return false;
                }
                lower[i * dim + i] = value.sqrt();
            } else {
                lower[i * dim + j] = value / lower[j * dim + j];
            }
        }
    }
    true
}

/// Solves `L z = b` by forward substitution into `z` (of `b`'s length).
#[inline]
fn forward_into(z: &mut [f64], lower: &[f64], b: &[f64]) {
    let dim = b.len();
    for i in 0..dim {
        let partial: f64 = (0..i).map(|k| lower[i * dim + k] * z[k]).sum();
        z[i] = (b[i] - partial) / lower[i * dim + i];
    }
}

/// Solves `L Lᵀ x = b` into `x`: forward, then back substitution in place.
#[inline]
pub(super) fn cholesky_solve_into(x: &mut Vec<f64>, lower: &[f64], dim: usize, b: &[f64]) {
    x.clear();
    x.resize(dim, 0.0);
    forward_into(x, lower, &b[..dim]);
    for i in (0..dim).rev() {
        let partial: f64 = (i + 1..dim).map(|k| lower[k * dim + i] * x[k]).sum();
        x[i] = (x[i] - partial) / lower[i * dim + i];
    }
}

/// `xᵀ Λ⁻¹ x = ‖L⁻¹x‖²`.
#[inline]
pub(super) fn leverage(lower: &[f64], x: &[f64]) -> f64 {
    let mut z = [0.0; MAX_DIM];
    let z = &mut z[..x.len()];
    forward_into(z, lower, x);
    z.iter().map(|z| z * z).sum()
}

#[inline]
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0]
        let matrix = |cells: [f64; 4]| move |i: usize, j: usize| cells[i * 2 + j];
        let (mut lower, mut x) = (Vec::new(), Vec::new());
        assert!(cholesky_into(&mut lower, 2, matrix([4.0, 2.0, 2.0, 3.0])));
        cholesky_solve_into(&mut x, &lower, 2, &[2.0, 1.0]);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(
            !cholesky_into(&mut lower, 2, matrix([1.0, 2.0, 2.0, 1.0])),
            "indefinite"
        );
    }
}
