//! Runtime dispatch to the widest vector unit of the CPU. saerl is compiled for the x86-64
//! baseline (SSE2) so one binary runs anywhere; `simd_fn!` compiles a kernel's body three times
//! (AVX-512, AVX2+FMA, baseline) and picks one per call from the CPU's features, detected once.
//! The bodies keep their own summation order on every path (no FMA contraction), so results
//! are bitwise the same on any CPU.

/// Defines `fn $name(args) -> ret` whose body is compiled for AVX-512, AVX2+FMA and the
/// baseline, the widest the CPU supports being called.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::kernels::simd::level() {
                    // SAFETY: `level` checked that the CPU has every feature enabled.
                    2 => return unsafe { v4($($arg),*) },
                    // SAFETY: likewise for AVX2 and FMA.
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// 2 = AVX-512 (F/BW/DQ/VL), 1 = AVX2 + FMA, 0 = baseline; detected once.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn level() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    match LEVEL.load(Ordering::Relaxed) {
        u8::MAX => {
            let l = if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("fma")
            {
                2
            } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            {
                1
            } else {
                0
            };
            LEVEL.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    }
}
