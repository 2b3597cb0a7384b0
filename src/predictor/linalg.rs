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

/// `M ← discount·M + x xᵀ` on the lower triangle (`j ≤ i`) of the `dim × dim` row-major
/// `matrix`, and `v ← discount·v + x·y`: a discounted least-squares update. Only the
/// lower triangle is kept (the factorisation reads nothing else), which halves the cost
/// of the update that every run pays; the upper triangle keeps what it last held.
#[inline]
pub(super) fn discounted_update(
    matrix: &mut [f64],
    vector: &mut [f64],
    x: &[f64],
    y: f64,
    discount: f64,
) {
    let dim = x.len();
    for (i, (&xi, cell)) in x.iter().zip(vector.iter_mut()).enumerate() {
        let row = &mut matrix[i * dim..i * dim + i + 1];
        for (cell, &xj) in row.iter_mut().zip(&x[..=i]) {
            *cell = discount * *cell + xi * xj;
        }
        *cell = discount * *cell + xi * y;
    }
}

/// A `dim × dim` least-squares system grown to `new_dim`: the new rows and columns
/// are zero (the past samples count at the new regressors' center).
pub(super) fn grow_system(matrix: &mut Vec<f64>, vector: &mut Vec<f64>, new_dim: usize) {
    let dim = vector.len();
    if new_dim <= dim {
        return;
    }
    let mut grown = vec![0.0; new_dim * new_dim];
    for i in 0..dim {
        grown[i * new_dim..i * new_dim + dim].copy_from_slice(&matrix[i * dim..(i + 1) * dim]);
    }
    *matrix = grown;
    vector.resize(new_dim, 0.0);
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
