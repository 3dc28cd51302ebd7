//! pool: the ImageNet stem's max pool (3x3, stride 2, pad 1) and the global average pool before fc.
//!
//! Max pool follows PyTorch: padding never wins, the first maximum in scan order (row, then column)
//! is the argmax, NaN propagates. The forward stores the argmax (flat index in the input plane) for the
//! backward, which routes each output gradient to it.
//! Global average pool backward takes the block output as a ReLU mask: the last block's output is a
//! ReLU output, so its gradient is masked by (x > 0) on the way in.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/pool.cu`.

pub mod cpu;

/// Max pool shape (mirrors `PoolProblem` in kernels/pool.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolProblem {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub p: i32,
    pub q: i32,
    pub window: i32,
    pub stride: i32,
    pub pad: i32,
    pub _reserved: i32,
}
crate::assert_kernel_layout!(PoolProblem, size 40, { n: 0, c: 4, h: 8, w: 12, p: 16, q: 20, window: 24, stride: 28, pad: 32, _reserved: 36 });

impl PoolProblem {
    /// The ImageNet stem's 3x3 / 2 / 1 max pool on an N C H W input.
    pub fn stem(n: usize, c: usize, h: usize, w: usize) -> PoolProblem {
        let (p, q) = crate::model::maxpool_out_hw(h, w);
        PoolProblem { n: n as i32, c: c as i32, h: h as i32, w: w as i32, p: p as i32, q: q as i32, window: 3, stride: 2, pad: 1, _reserved: 0 }
    }
    pub fn input_len(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
    pub fn output_len(&self) -> usize {
        (self.n * self.c * self.p * self.q) as usize
    }
}
