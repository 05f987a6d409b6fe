//! Fits the 8x8-digits Gaussian mixture of `diffpost bench posterior` (and its tests): one
//! Gaussian per digit class (weights = class frequencies, the class mean, the class covariance
//! plus `ridge I`) on the first 1,697 of scikit-learn's 1,797 digits, pixels scaled from 0..16 to
//! [-1, 1]; the last 100 digits are held out as ground truths. Writes `data/digits_gmm.npz` and
//! `data/digits_test100.npy`.
//!
//!     cargo run --release -p diffpost --example fit_digits -- ../shared/data/sklearn_digits.npy \
//!         ../shared/data/sklearn_digits_labels.npy data
use std::path::Path;

use candle_core::{Device, Tensor};
use diffpost::prior::GaussianMixture;
use nalgebra::{DMatrix, DVector};

const RIDGE: f64 = 0.05;
const HELD_OUT: usize = 100;

fn main() -> diffpost::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (images, labels, out) = (
        Path::new(&args[1]),
        Path::new(&args[2]),
        Path::new(&args[3]),
    );
    let x = diffpost::io::read_array(images, "digits")?; // [N, 8, 8], 0..16
    let n = x.dims()[0];
    let x: Vec<f64> = x
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    let lab: Vec<f64> = diffpost::io::read_array(labels, "labels")?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    let d = 64;
    let fit = n - HELD_OUT;
    let row =
        |i: usize| DVector::from_iterator(d, x[i * d..(i + 1) * d].iter().map(|v| v / 8.0 - 1.0));
    let (mut weights, mut means, mut covs) = (vec![], vec![], vec![]);
    for c in 0..10 {
        let idx: Vec<usize> = (0..fit).filter(|&i| lab[i] as usize == c).collect();
        let k = idx.len() as f64;
        let mean = idx.iter().fold(DVector::zeros(d), |a, &i| a + row(i)) / k;
        let mut cov = DMatrix::zeros(d, d);
        for &i in &idx {
            let r = row(i) - &mean;
            cov += &r * r.transpose();
        }
        cov /= k - 1.0;
        cov += DMatrix::identity(d, d) * RIDGE;
        weights.push(k / fit as f64);
        means.push(mean.iter().copied().collect());
        covs.push(cov);
    }
    let gmm = GaussianMixture::new(weights, means, covs)?;
    gmm.write_npz(out.join("digits_gmm.npz"))?;
    let held: Vec<f64> = x[fit * d..].to_vec();
    let t =
        Tensor::from_vec(held, (HELD_OUT, 8, 8), &Device::Cpu)?.to_dtype(candle_core::DType::U8)?;
    diffpost::io::write_npy(&out.join("digits_test100.npy"), &t)?;
    let hl: Vec<f64> = lab[fit..].to_vec();
    let t = Tensor::from_vec(hl, HELD_OUT, &Device::Cpu)?.to_dtype(candle_core::DType::U8)?;
    diffpost::io::write_npy(&out.join("digits_test100_labels.npy"), &t)?;
    println!(
        "wrote {}/digits_gmm.npz (K = 10, d = 64), digits_test100.npy",
        out.display()
    );
    Ok(())
}
