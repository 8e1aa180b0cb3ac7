//! An SAE ready to encode batches of rows, on the CPU (the encoder GEMM and top-k on slices) or
//! on a device (`on_device.rs`): what `stats`, `eval` and `topk_encode` run, whichever `--device`.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::on_device::DeviceSae;
use super::quality::reconstruct;
use super::Sae;
use crate::kernels::{by_value, Encoded};

pub enum BatchEncoder<'a> {
    Cpu(&'a Sae, Encoded),
    Device(DeviceSae, Device),
}

impl<'a> BatchEncoder<'a> {
    /// On the CPU path for the CPU device, else with the weights on `dev` (tensors it makes
    /// can meet only tensors of that same `Device`, e.g. a model loaded onto it).
    pub fn new(sae: &'a Sae, dev: &Device) -> Result<Self> {
        match dev {
            Device::Cpu => Ok(Self::Cpu(sae, Encoded::default())),
            dev => Ok(Self::Device(DeviceSae::new(sae, dev)?, dev.clone())),
        }
    }

    fn upload(dev: &Device, x: &[f32], d: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(x, (x.len() / d, d), dev)?)
    }

    /// Each row's active latents (unordered on the CPU, largest first on a device).
    pub fn latents(&mut self, x: &[f32], d: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        match self {
            Self::Cpu(sae, enc) => Ok(sae.map_pre_activations(x, enc, |_, z| sae.activate(z))),
            Self::Device(sae, dev) => {
                let (idx, val) = sae.encode(&Self::upload(dev, x, d)?)?;
                let (idx, val) = (idx.to_vec2::<u32>()?, val.to_vec2::<f32>()?);
                Ok(idx
                    .into_iter()
                    .zip(val)
                    .map(|(i, v)| i.into_iter().zip(v).collect())
                    .collect())
            }
        }
    }

    /// Each row's active latents, largest first.
    pub fn sorted_latents(&mut self, x: &[f32], d: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        let mut out = self.latents(x, d)?;
        out.iter_mut().for_each(|l| by_value(l));
        Ok(out)
    }

    /// x̂ of every row and each row's number of non-zero latents.
    pub fn reconstruct(&mut self, x: &[f32], d: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        match self {
            Self::Cpu(sae, enc) => Ok(reconstruct(sae, x, enc)),
            Self::Device(sae, dev) => {
                let (x_hat, l0) = sae.reconstruct(&Self::upload(dev, x, d)?)?;
                Ok((
                    x_hat.flatten_all()?.to_vec1()?,
                    l0.to_vec1::<f32>()?
                        .into_iter()
                        .map(|v| v as usize)
                        .collect(),
                ))
            }
        }
    }

    /// `reconstruct`, and the features that fired (z > 0) in each row, flattened.
    pub fn reconstruct_firing(
        &mut self,
        x: &[f32],
        d: usize,
    ) -> Result<(Vec<f32>, Vec<usize>, Vec<u32>)> {
        if let Self::Cpu(sae, enc) = self {
            let rows = sae.map_pre_activations(x, enc, |_, z| {
                let lat = sae.activate(z);
                let fired: Vec<u32> = lat
                    .iter()
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(i, _)| *i)
                    .collect();
                let l0 = lat.iter().filter(|(_, v)| *v != 0.0).count();
                (sae.decode(&lat), l0, fired)
            });
            let mut out = (Vec::with_capacity(x.len()), Vec::new(), Vec::new());
            for (h, l0, fired) in rows {
                out.0.extend(h);
                out.1.push(l0);
                out.2.extend(fired);
            }
            return Ok(out);
        }
        let fired = self
            .latents(x, d)?
            .into_iter()
            .flat_map(|l| l.into_iter().filter(|(_, v)| *v > 0.0).map(|(i, _)| i))
            .collect();
        let (x_hat, l0) = self.reconstruct(x, d)?;
        Ok((x_hat, l0, fired))
    }

    /// x̂ of a block output h [.., d] on its own device: the eval splice. On a device the
    /// reconstruction never leaves it.
    pub fn reconstruct_tensor(&self, h: &Tensor) -> Result<Tensor> {
        let d = h.dim(candle_core::D::Minus1)?;
        let flat = h.reshape(((), d))?;
        match self {
            Self::Device(sae, _) => Ok(sae.reconstruct(&flat)?.0.reshape(h.shape())?),
            Self::Cpu(sae, _) => {
                let x: Vec<f32> = flat.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
                let (x_hat, _) = reconstruct(sae, &x, &mut Encoded::default());
                Ok(Tensor::from_vec(x_hat, h.shape(), &Device::Cpu)?.to_device(h.device())?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path (here on candle's CPU device) encodes and reconstructs as the CPU path.
    #[test]
    fn the_device_path_matches_the_cpu_path() {
        let (d, n, k, rows) = (24, 96, 5, 40);
        let mut rng = crate::rng::SplitMix64::new(9);
        let mut v = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| rng.below(2000) as f32 / 1000.0 - 1.0)
                .collect()
        };
        let x = v(rows * d);
        let mut sae = crate::sae::train::cold_start(v(d), n, k, 3);
        sae.b_enc = v(n);
        sae.b_dec = v(d);
        let mut cpu = BatchEncoder::new(&sae, &Device::Cpu).unwrap();
        let mut dev =
            BatchEncoder::Device(DeviceSae::new(&sae, &Device::Cpu).unwrap(), Device::Cpu);
        let mut a = cpu.latents(&x, d).unwrap();
        a.iter_mut().for_each(|l| by_value(l));
        assert_eq!(a, dev.latents(&x, d).unwrap());
        let ((xa, la), (xb, lb)) = (
            cpu.reconstruct(&x, d).unwrap(),
            dev.reconstruct(&x, d).unwrap(),
        );
        assert_eq!(la, lb);
        for (p, q) in xa.iter().zip(&xb) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
        let h = Tensor::from_slice(&x, (4, rows / 4, d), &Device::Cpu).unwrap();
        let ta: Vec<f32> = cpu
            .reconstruct_tensor(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let tb: Vec<f32> = dev
            .reconstruct_tensor(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (p, q) in ta.iter().zip(&tb) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}
