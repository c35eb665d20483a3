// Top-k / top-p sampling from logits without sorting the vocabulary.
//
// One thread block per row. The kept set of top-k + top-p is {i : p_i >= t} for a threshold t
// equal to one of the row's probabilities, so t is found by a binary search over the bit patterns
// of non-negative floats (monotone in value): 32 passes, each a block reduction of (count, mass)
// over the row. The token is then drawn by inverse CDF over the kept set in index order, with one
// uniform number per row supplied by the caller (so draws follow the caller's per-row generators).
//
// Semantics match tts_engine/engine/sampler.py: temperature, then top-k (0 = off), then top-p
// (1 = off) on the top-k-renormalised distribution. Tokens tied with the threshold value are all
// kept, where the sorted-order rule keeps only some of them: logits computed in bf16 do tie, so
// the kept set can then be a few tokens larger than the torch path's.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 1024;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum (or max) of one float per thread; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = (threadIdx.x < warps) ? scratch[threadIdx.x] : (kMax ? -INFINITY : 0.f);
  if (warp == 0) v = kMax ? warp_max(v) : warp_sum(v);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

__global__ void top_k_top_p_sample_kernel(const float* __restrict__ logits, int64_t vocab,
                                          const float* __restrict__ temperature,
                                          const int32_t* __restrict__ top_k,
                                          const float* __restrict__ top_p,
                                          const float* __restrict__ uniform,
                                          int64_t* __restrict__ out) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  const float inv_t = 1.f / temperature[row];
  const int k = top_k[row];
  const float p_target = top_p[row];

  // Unnormalised probabilities exp((l - max) / T); the maximum one is exactly 1.
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, l[i]);
  m = block_reduce<true>(m, scratch);
  auto prob = [&](int64_t i) { return __expf((l[i] - m) * inv_t); };

  float total = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) total += prob(i);
  total = block_reduce<false>(total, scratch);

  // Largest threshold t whose kept set {p >= t} satisfies both rules: no more than the k largest
  // (ties aside), and at least top_p of their mass. Search over float bit patterns.
  uint32_t lo = 0, hi = __float_as_uint(1.f);   // t in [0, 1]; t = 0 keeps everything
  float k_mass = total;
  if (k > 0 && k < vocab) {
    // t_k: largest t with count(p >= t) >= k, i.e. the k-th largest probability.
    uint32_t a = 0, b = hi;
    while (a < b) {
      const uint32_t mid = a + (b - a + 1) / 2;
      const float t = __uint_as_float(mid);
      float c = 0.f;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) c += prob(i) >= t ? 1.f : 0.f;
      c = block_reduce<false>(c, scratch);
      if (c >= k) a = mid; else b = mid - 1;
    }
    lo = a;
    const float tk = __uint_as_float(a);
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) { const float p = prob(i); s += p >= tk ? p : 0.f; }
    k_mass = block_reduce<false>(s, scratch);
  }
  if (p_target < 1.f) {
    // t_p: largest t >= t_k whose kept mass still reaches top_p of the top-k mass.
    uint32_t a = lo, b = hi;
    while (a < b) {
      const uint32_t mid = a + (b - a + 1) / 2;
      const float t = __uint_as_float(mid);
      float s = 0.f;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) { const float p = prob(i); s += p >= t ? p : 0.f; }
      s = block_reduce<false>(s, scratch);
      if (s >= p_target * k_mass) a = mid; else b = mid - 1;
    }
    lo = a;
  }
  const float t = __uint_as_float(lo);

  float kept = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) { const float p = prob(i); kept += p >= t ? p : 0.f; }
  kept = block_reduce<false>(kept, scratch);

  // Inverse CDF in index order: the first kept token whose running sum exceeds u * kept. Walk
  // the row in chunks of blockDim, scanning each chunk; the first match wins by atomicMin, so
  // rounding at chunk or warp boundaries can neither skip a token nor pick two.
  const float target = uniform[row] * kept;
  __shared__ unsigned long long chosen;
  __shared__ float warp_totals[32];
  if (threadIdx.x == 0) chosen = ~0ull;
  __syncthreads();
  float base = 0.f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t start = 0; start < vocab; start += blockDim.x) {
    const int64_t i = start + threadIdx.x;
    float p = 0.f;
    if (i < vocab) { p = prob(i); if (p < t) p = 0.f; }
    float x = p;   // inclusive scan inside the warp, then across warps
    for (int o = 1; o < 32; o <<= 1) { const float y = __shfl_up_sync(0xffffffffu, x, o); if (lane >= o) x += y; }
    if (lane == 31) warp_totals[warp] = x;
    __syncthreads();
    if (warp == 0) {
      float w = lane < (blockDim.x >> 5) ? warp_totals[lane] : 0.f;
      for (int o = 1; o < 32; o <<= 1) { const float y = __shfl_up_sync(0xffffffffu, w, o); if (lane >= o) w += y; }
      warp_totals[lane] = w;
    }
    __syncthreads();
    const float incl = base + (warp > 0 ? warp_totals[warp - 1] : 0.f) + x;
    if (p > 0.f && incl > target) atomicMin(&chosen, static_cast<unsigned long long>(i));
    base += warp_totals[(blockDim.x >> 5) - 1];
    __syncthreads();
    if (chosen != ~0ull) break;
  }
  if (threadIdx.x == 0) {
    int64_t pick = static_cast<int64_t>(chosen);
    if (chosen == ~0ull) {   // rounding put target past the last kept token: take that token
      pick = 0;              // (none at all: NaN or infinite logits; the caller takes their argmax)
      for (int64_t i = vocab - 1; i >= 0; --i) if (prob(i) >= t) { pick = i; break; }
    }
    out[row] = pick;
  }
}

}  // namespace

// C entry point (also used by the Python binding): rows x vocab float32 logits on the device.
extern "C" cudaError_t tts_top_k_top_p_sample(const float* logits, int64_t rows, int64_t vocab,
                                              const float* temperature, const int32_t* top_k,
                                              const float* top_p, const float* uniform, int64_t* out,
                                              cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  top_k_top_p_sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, vocab, temperature, top_k, top_p, uniform, out);
  return cudaGetLastError();
}
