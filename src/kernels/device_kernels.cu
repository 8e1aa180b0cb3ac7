// saerl's CUDA kernels, compiled at run time by NVRTC (src/kernels/device.rs has a CPU
// reference for each, and the tests compare them). Row-major float32 throughout; indices are
// unsigned 32-bit.

extern "C" {

// Order-preserving map of a float to an unsigned key: a larger float gets a larger key.
__device__ __forceinline__ unsigned f2key(float v) {
    unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// "a ranks before b": larger value first, ties to the lower index.
__device__ __forceinline__ bool before(float av, unsigned ai, float bv, unsigned bi) {
    return av > bv || (av == bv && ai < bi);
}

// Per row r of z [rows × n]: the k largest of z[r] + bias, largest first, ties to the lower
// index, into out_idx / out_val [rows × k]. One block per row (blockDim 256). A radix select
// on the float keys (four 8-bit passes) finds the k-th largest key T; the entries above T and
// the first (by index) of those equal to T are gathered, then bitonic-sorted in shared memory.
// Dynamic shared memory: p2 × 8 bytes, p2 = the next power of two ≥ k.
__global__ void topk_rows(const float* __restrict__ z, const float* __restrict__ bias,
                          unsigned n, unsigned k, unsigned p2,
                          unsigned* __restrict__ out_idx, float* __restrict__ out_val) {
    extern __shared__ unsigned char smem[];
    float* sv = (float*)smem;
    unsigned* si = (unsigned*)(smem + p2 * sizeof(float));
    __shared__ unsigned hist[256];
    __shared__ unsigned s_prefix, s_mask, s_remaining, s_gt, s_taken;
    __shared__ unsigned warp_cnt[8];
    const unsigned tid = threadIdx.x, nt = blockDim.x;
    const float* row = z + (unsigned long long)blockIdx.x * n;
    if (tid == 0) { s_prefix = 0; s_mask = 0; s_remaining = k; s_gt = 0; s_taken = 0; }
    __syncthreads();
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned i = tid; i < 256; i += nt) hist[i] = 0;
        __syncthreads();
        const unsigned prefix = s_prefix, mask = s_mask;
        for (unsigned i = tid; i < n; i += nt) {
            unsigned key = f2key(row[i] + bias[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            unsigned rem = s_remaining;
            for (int d = 255; d >= 0; --d) {
                unsigned c = hist[d];
                if (c >= rem) {
                    s_prefix = prefix | ((unsigned)d << shift);
                    s_mask = mask | (255u << shift);
                    break;
                }
                rem -= c;
            }
            s_remaining = rem;
        }
        __syncthreads();
    }
    const unsigned T = s_prefix, need_eq = s_remaining, greater = k - need_eq;
    // Entries above the k-th largest key: any order, sorted below.
    for (unsigned i = tid; i < n; i += nt) {
        float v = row[i] + bias[i];
        if (f2key(v) > T) {
            unsigned slot = atomicAdd(&s_gt, 1u);
            sv[slot] = v;
            si[slot] = i;
        }
    }
    // Entries equal to it, lowest indices first: tile by tile, ranked with warp ballots.
    const unsigned lane = tid & 31, warp = tid >> 5, warps = (nt + 31) / 32;
    for (unsigned base = 0; base < n; base += nt) {
        __syncthreads();
        if (s_taken >= need_eq) break;
        unsigned i = base + tid;
        float v = 0.0f;
        bool eq = false;
        if (i < n) {
            v = row[i] + bias[i];
            eq = f2key(v) == T;
        }
        unsigned ballot = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_cnt[warp] = __popc(ballot);
        __syncthreads();
        unsigned rank = __popc(ballot & ((1u << lane) - 1u));
        for (unsigned w = 0; w < warp; ++w) rank += warp_cnt[w];
        unsigned taken = s_taken;
        if (eq && taken + rank < need_eq) {
            sv[greater + taken + rank] = v;
            si[greater + taken + rank] = i;
        }
        __syncthreads();
        if (tid == 0) {
            unsigned total = 0;
            for (unsigned w = 0; w < warps; ++w) total += warp_cnt[w];
            s_taken = taken + total;
        }
    }
    __syncthreads();
    for (unsigned i = k + tid; i < p2; i += nt) {
        sv[i] = __int_as_float(0xff800000);
        si[i] = 0xffffffffu;
    }
    __syncthreads();
    // Bitonic sort of p2 entries into rank order.
    for (unsigned size = 2; size <= p2; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned i = tid; i < p2; i += nt) {
                unsigned j = i ^ stride;
                if (j > i) {
                    bool up = (i & size) == 0;
                    bool swap = up ? before(sv[j], si[j], sv[i], si[i])
                                   : before(sv[i], si[i], sv[j], si[j]);
                    if (swap) {
                        float tv = sv[i]; sv[i] = sv[j]; sv[j] = tv;
                        unsigned ti = si[i]; si[i] = si[j]; si[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (unsigned i = tid; i < k; i += nt) {
        out_idx[(unsigned long long)blockIdx.x * k + i] = si[i];
        out_val[(unsigned long long)blockIdx.x * k + i] = sv[i];
    }
}

// out[r] = b + Σ_j val[r, j] · w[idx[r, j]] (w feature-major [n × d]); one block per row.
__global__ void sparse_decode(const unsigned* __restrict__ idx, const float* __restrict__ val,
                              unsigned k, const float* __restrict__ w,
                              const float* __restrict__ b, unsigned d, float* __restrict__ out) {
    const unsigned long long r = blockIdx.x;
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = b[c];
        for (unsigned j = 0; j < k; ++j) {
            acc += val[r * k + j] * w[(unsigned long long)idx[r * k + j] * d + c];
        }
        out[r * d + c] = acc;
    }
}

// out[r, j] = ⟨w[idx[r, j]], x[r]⟩; one block of 8 warps per row, a warp per j.
__global__ void gather_dot(const unsigned* __restrict__ idx, unsigned k,
                           const float* __restrict__ w, const float* __restrict__ x,
                           unsigned d, float* __restrict__ out) {
    const unsigned long long r = blockIdx.x;
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (unsigned j = warp; j < k; j += warps) {
        const float* col = w + (unsigned long long)idx[r * k + j] * d;
        const float* xr = x + r * d;
        float acc = 0.0f;
        for (unsigned c = lane; c < d; c += 32) acc += col[c] * xr[c];
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) out[r * k + j] = acc;
    }
}

// Adam on one parameter: state = [p; m; v] (3 × n), g the gradient, scaled by
// min(1, clip_norm / (‖all gradients‖ + 1e-6)) where sq_norm[0] = ‖all gradients‖².
__global__ void adam(float* __restrict__ state, const float* __restrict__ g, unsigned long long n,
                     float step, float bc2, const double* __restrict__ sq_norm, float clip_norm,
                     float b1, float b2, float eps) {
    const float clip = fminf(clip_norm / ((float)sqrt(sq_norm[0]) + 1e-6f), 1.0f);
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float gi = g[i] * clip;
        float m = b1 * state[n + i] + (1.0f - b1) * gi;
        float v = b2 * state[2 * n + i] + (1.0f - b2) * gi * gi;
        state[n + i] = m;
        state[2 * n + i] = v;
        state[i] -= step * m / (sqrtf(v) / bc2 + eps);
    }
}

// Each d-wide row of w divided by max(‖row‖, 1e-12); one block (256 threads) per row.
__global__ void unit_rows(float* __restrict__ w, unsigned d) {
    __shared__ float part[256];
    float* row = w + (unsigned long long)blockIdx.x * d;
    float acc = 0.0f;
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) acc += row[c] * row[c];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const float norm = fmaxf(sqrtf(part[0]), 1e-12f);
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) row[c] = row[c] / norm;
}

// counts[f] += the number of entries of idx equal to f.
__global__ void bincount(const unsigned* __restrict__ idx, unsigned long long len, unsigned* counts) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        atomicAdd(&counts[idx[i]], 1u);
    }
}

// hits[f · rows + r] = j + 1 for each selection (r, j) of feature f = idx[r, j] (hits zeroed
// before): the selections by feature, for `sparse_outer`. A feature appears at most once per row.
__global__ void mark_hits(const unsigned* __restrict__ idx, unsigned rows, unsigned k,
                          unsigned* __restrict__ hits) {
    const unsigned long long len = (unsigned long long)rows * k;
    for (unsigned long long s = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; s < len;
         s += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned r = (unsigned)(s / k), j = (unsigned)(s % k);
        hits[(unsigned long long)idx[s] * rows + r] = j + 1;
    }
}

// g[f] = Σ coef[r, j] · y[r] over the rows r that selected f (as slot j), rows ascending: a
// weight gradient through the selections only. With `sums`, g[n·d + f] = Σ coef[r, j] too.
// One block per feature: warp 0 lists the feature's rows in order (ballots over `hits`, a
// chunk of rows at a time), then every thread adds them up for its columns. Deterministic.
__global__ void sparse_outer(const unsigned* __restrict__ hits, unsigned rows,
                             const float* __restrict__ coef, unsigned k,
                             const float* __restrict__ y, unsigned d, unsigned n, int sums,
                             float* __restrict__ g) {
    const unsigned CHUNK = 1024;
    __shared__ unsigned list_r[CHUNK], list_j[CHUNK];
    __shared__ unsigned s_count;
    const unsigned f = blockIdx.x, tid = threadIdx.x, lane = tid & 31;
    const unsigned* col = hits + (unsigned long long)f * rows;
    float* out = g + (unsigned long long)f * d;
    for (unsigned c = tid; c < d; c += blockDim.x) out[c] = 0.0f;
    float total = 0.0f;
    for (unsigned base = 0; base < rows; base += CHUNK) {
        if (tid < 32) {
            unsigned count = 0;
            for (unsigned i = 0; i < CHUNK && base + i < rows; i += 32) {
                const unsigned r = base + i + lane;
                const unsigned h = r < rows ? col[r] : 0u;
                const unsigned ballot = __ballot_sync(0xffffffffu, h != 0u);
                if (h != 0u) {
                    const unsigned at = count + __popc(ballot & ((1u << lane) - 1u));
                    list_r[at] = r;
                    list_j[at] = h - 1u;
                }
                count += __popc(ballot);
            }
            if (lane == 0) s_count = count;
        }
        __syncthreads();
        const unsigned m = s_count;
        for (unsigned c = tid; c < d; c += blockDim.x) {
            float acc = out[c];
            for (unsigned e = 0; e < m; ++e) {
                acc += coef[(unsigned long long)list_r[e] * k + list_j[e]] *
                       y[(unsigned long long)list_r[e] * d + c];
            }
            out[c] = acc;
        }
        if (sums && tid == 0) {
            for (unsigned e = 0; e < m; ++e) total += coef[(unsigned long long)list_r[e] * k + list_j[e]];
        }
        __syncthreads();
    }
    if (sums && tid == 0) g[(unsigned long long)n * d + f] = total;
}

// partial[b] = Σ x[i]² in double over block b's grid-stride share (blockDim 256): the first
// half of a deterministic sum of squares (a fixed grid, then `sum_partials`).
__global__ void sum_sq_partial(const float* __restrict__ x, unsigned long long len,
                               double* __restrict__ partial) {
    __shared__ double part[256];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const double v = x[i];
        acc += v * v;
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// out[0] = Σ partial[0..m], one block of 256 threads.
__global__ void sum_partials(const double* __restrict__ partial, unsigned m, double* __restrict__ out) {
    __shared__ double part[256];
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < m; i += blockDim.x) acc += partial[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = part[0];
}

}
