// Diagnostic: how Hopper's wgmma m64n64k16 (bf16 or f16 in, fp32 accumulators) adds its products,
// checked against the model that kernels/build_assign.cuh's score_band_lo_first is derived from (exact
// products; each step of m >= 1 products aligns its terms to the largest exponent E, keeping >= 24
// bits from 2^E down, and rounds toward zero), and the error of build_ws.cu's scores (bf16 or f16
// keys, centroids split into hi + lo of the keys' type, lo products first) against that bound.
//   1. Patterns: sums of 1 and small powers of two; the result less 1 in units of 2^-24 says how many
//      bits the terms keep below the largest one and how the sum is rounded (H100: 26 bits, toward zero).
//   2. Random dot products of 64 coordinates in four classes, for three product orders: the error
//      against the exact x.c (long double), in units of 2^-23 S with S = sum_j |x_j||c_j|, beside the
//      bound's 258.3 (score_band_lo_first; the same bound for the interleaved order is 451).
//   3. f16 (score_band_f16_lo_first): subnormal operands and products kept (not flushed), and random
//      dot products, subnormal lo parts and keys included, against 258.3 x 2^-23 S + 2^-25 sum |x_j|.
// nvcc is here, not on the GPU machine: build it into an untracked file of the repository root,
// which travels with the working tree, then run it there:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -I kernels -o wgmma-accum-probe scripts/wgmma-accum-probe.cu
//   (device) ./wgmma-accum-probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include <cuda_fp16.h>

#include "wgmma.cuh"

#define CHECK(call)                                                                                  \
  do {                                                                                               \
    const cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

constexpr int kRows = 64;                       // A rows (points) = B rows (centroids) = 64
constexpr int kDim = 64;                        // coordinates: 4 k-steps of 16
constexpr int kTile = kRows * kDim;             // elements of one operand (2 bytes each)
enum Order : int { LO_FIRST = 0, INTERLEAVED = 1, HI_ONLY = 2 };
const char* const kOrderNames[] = {"lo first (build_ws)", "hi, lo interleaved", "hi only"};

// Block b: out[b] (64 x 64, row-major: point r, centroid c) = A_b B_b^T in the given product order,
// operands of type T (bf16 or f16). Launch: grid (blocks), block 128 (one warpgroup), dynamic smem
// 3 * 8 KB + 1 KB alignment slack.
template <typename T>
__global__ void __launch_bounds__(128) probe(const uint16_t* a, const uint16_t* b_hi, const uint16_t* b_lo, float* out, int order) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint8_t* sa = smem;
  uint8_t* shi = sa + kTile * 2;
  uint8_t* slo = shi + kTile * 2;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int e = threadIdx.x; e < kRows * 8; e += blockDim.x) {
    const int row = e >> 3;
    const int chunk = e & 7;
    const int64_t src = base + row * kDim + chunk * 8;
    *reinterpret_cast<uint4*>(sa + swizzled(row, chunk)) = *reinterpret_cast<const uint4*>(a + src);
    *reinterpret_cast<uint4*>(shi + swizzled(row, chunk)) = *reinterpret_cast<const uint4*>(b_hi + src);
    *reinterpret_cast<uint4*>(slo + swizzled(row, chunk)) = *reinterpret_cast<const uint4*>(b_lo + src);
  }
  fence_proxy_async();
  __syncthreads();
  const uint64_t da = swizzled_desc(sa), dhi = swizzled_desc(shi), dlo = swizzled_desc(slo);
  float d[32];
  for (int k = 0; k < 32; ++k) d[k] = 0.0f;
  wgmma_fence();
  if (order == LO_FIRST) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_m64n64k16<T>(d, da + 2 * ks, dlo + 2 * ks, ks > 0);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_m64n64k16<T>(d, da + 2 * ks, dhi + 2 * ks, 1);
  } else if (order == INTERLEAVED) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      wgmma_m64n64k16<T>(d, da + 2 * ks, dhi + 2 * ks, ks > 0);
      wgmma_m64n64k16<T>(d, da + 2 * ks, dlo + 2 * ks, 1);
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_m64n64k16<T>(d, da + 2 * ks, dhi + 2 * ks, ks > 0);
  }
  wgmma_commit();
  wgmma_wait_all();
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, q = lane >> 2, t = lane & 3;
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i)
      out[static_cast<int64_t>(blockIdx.x) * kTile + (16 * w + q + 8 * (i >> 1)) * kRows + 8 * j + 2 * t + (i & 1)] = d[4 * j + i];
}

// fp32 -> bf16 bits, round to nearest even (finite inputs), as __floats2bfloat162_rn.
uint16_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// fp32 <-> f16 bits, round to nearest even (cuda_fp16.h's host conversions).
uint16_t to_f16(float v) {
  const __half h = __float2half_rn(v);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float from_f16(uint16_t b) {
  __half h;
  std::memcpy(&h, &b, 2);
  return __half2float(h);
}

struct Batch {
  int blocks;
  bool f16;                         // operands f16 (else bf16)
  std::vector<uint16_t> a, hi, lo;  // [blocks][64][64]
  std::vector<float> c;             // fp32 centroids before the split
  explicit Batch(int n, bool half = false)
      : blocks(n), f16(half), a(size_t(n) * kTile), hi(size_t(n) * kTile), lo(size_t(n) * kTile), c(size_t(n) * kTile) {}
  uint16_t to(float v) const { return f16 ? to_f16(v) : to_bf16(v); }
  float from(uint16_t b) const { return f16 ? from_f16(b) : from_bf16(b); }
  void set_c(size_t i, float v) {  // split_pair<T>: hi = T(v), lo = T(v - hi)
    c[i] = v;
    hi[i] = to(v);
    lo[i] = to(v - from(hi[i]));
  }
};

std::vector<float> run(const Batch& batch, int order) {
  const size_t n = size_t(batch.blocks) * kTile;
  uint16_t *a, *hi, *lo;
  float* out;
  CHECK(cudaMalloc(&a, n * 2));
  CHECK(cudaMalloc(&hi, n * 2));
  CHECK(cudaMalloc(&lo, n * 2));
  CHECK(cudaMalloc(&out, n * 4));
  CHECK(cudaMemcpy(a, batch.a.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(hi, batch.hi.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(lo, batch.lo.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(out, 0xff, n * 4));  // NaN: every output must be written
  const int smem = 3 * kTile * 2 + 1024;
  if (batch.f16) {
    CHECK(cudaFuncSetAttribute(probe<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    probe<__half><<<batch.blocks, 128, smem>>>(a, hi, lo, out, order);
  } else {
    CHECK(cudaFuncSetAttribute(probe<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    probe<__nv_bfloat16><<<batch.blocks, 128, smem>>>(a, hi, lo, out, order);
  }
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> h(n);
  CHECK(cudaMemcpy(h.data(), out, n * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaFree(a));
  CHECK(cudaFree(hi));
  CHECK(cudaFree(lo));
  CHECK(cudaFree(out));
  for (float v : h)
    if (std::isnan(v)) {
      std::fprintf(stderr, "an output was not written\n");
      std::exit(3);
    }
  return h;
}

// Part 1: row r of A holds pattern r's products (B = all ones, hi only), so out[r][r] is its sum.
void patterns() {
  struct Pattern {
    const char* what;
    std::vector<std::pair<int, double>> products;  // (k, value)
  };
  const double u = std::ldexp(1.0, -24);
  std::vector<Pattern> ps;
  auto smalls = [&](int from, int to, double v, std::vector<std::pair<int, double>> p) {
    for (int k = from; k < to; ++k) p.push_back({k, v});
    return p;
  };
  ps.push_back({"1 + 15 x 2^-24 (k 1..15: one k16)", smalls(1, 16, u, {{0, 1.0}})});
  ps.push_back({"15 x 2^-24 (k 0..14) + 1 (k 15)", smalls(0, 15, u, {{15, 1.0}})});
  ps.push_back({"1 + 15 x 2^-25", smalls(1, 16, u / 2, {{0, 1.0}})});
  ps.push_back({"1 + 15 x 2^-26", smalls(1, 16, u / 4, {{0, 1.0}})});
  ps.push_back({"1 + 3 x 2^-24 (k 1..3)", smalls(1, 4, u, {{0, 1.0}})});
  ps.push_back({"1 + 4 x 2^-24 (k 4..7)", smalls(4, 8, u, {{0, 1.0}})});
  ps.push_back({"1 + 8 x 2^-24 (k 8..15)", smalls(8, 16, u, {{0, 1.0}})});
  ps.push_back({"1 (k 0) + 16 x 2^-24 (k 16..31: next k16)", smalls(16, 32, u, {{0, 1.0}})});
  ps.push_back({"1 + 2^-23 + 2^-24 (rounding)", {{0, 1.0}, {1, 2 * u}, {2, u}}});
  ps.push_back({"1 - 2^-24 (k 1)", {{0, 1.0}, {1, -u}}});
  ps.push_back({"1 - 2^-25 (k 1)", {{0, 1.0}, {1, -u / 2}}});
  ps.push_back({"2^-24 x 63 (k 1..63) + 1", smalls(1, 64, u, {{0, 1.0}})});
  Batch b(1);
  for (size_t i = 0; i < size_t(kTile); ++i) {
    b.a[i] = 0;
    b.set_c(i, 1.0f);
  }
  for (size_t r = 0; r < ps.size(); ++r)
    for (auto [k, v] : ps[r].products) b.a[r * kDim + k] = to_bf16(static_cast<float>(v));
  const std::vector<float> out = run(b, HI_ONLY);
  std::printf("patterns (hi only): result - 1 in units of 2^-24, against the exact sum\n");
  for (size_t r = 0; r < ps.size(); ++r) {
    double exact = 0;
    for (auto [k, v] : ps[r].products) exact += v;
    std::printf("  %-44s got %+8.2f  exact %+8.2f\n", ps[r].what, (out[r * kRows + r] - 1.0) / u, (exact - 1.0) / u);
  }
}

// Random dot products: a batch whose coordinate j of every point and centroid is draw(j) = (x, c),
// in the batch's operand type (draws in point-major order).
template <typename Draw>
Batch random_batch(int blocks, bool f16, Draw draw) {
  Batch b(blocks, f16);
  for (size_t i = 0; i < size_t(blocks) * kTile; ++i) {
    const std::pair<double, double> xc = draw(int(i % kDim));
    b.a[i] = b.to(static_cast<float>(xc.first));
    b.set_c(i, static_cast<float>(xc.second));
  }
  return b;
}

// |score - exact x.c| of every dot product of `b` over bound(S, sum |x_j|), S = sum_j |x_j||c_j|
// (exact in long double, from the fp32 centroids before the split), sorted. A zero bound counts as
// 0 when the score is exact, else as infinity.
template <typename Bound>
std::vector<double> sorted_error_ratios(const Batch& b, const std::vector<float>& out, Bound bound) {
  std::vector<double> ratios;
  ratios.reserve(size_t(b.blocks) * kRows * kRows);
  for (int blk = 0; blk < b.blocks; ++blk)
    for (int r = 0; r < kRows; ++r)
      for (int cc = 0; cc < kRows; ++cc) {
        long double exact = 0, s = 0, sx = 0;
        for (int j = 0; j < kDim; ++j) {
          const long double x = b.from(b.a[size_t(blk) * kTile + r * kDim + j]);
          const long double c = b.c[size_t(blk) * kTile + cc * kDim + j];
          exact += x * c;
          s += std::fabs(x * c);
          sx += std::fabs(x);
        }
        const long double den = bound(s, sx);
        const double got = out[size_t(blk) * kTile + r * kRows + cc];
        ratios.push_back(den > 0 ? static_cast<double>(std::fabs(got - exact) / den) : (got == exact ? 0.0 : INFINITY));
      }
  std::sort(ratios.begin(), ratios.end());
  return ratios;
}

// Part 2: random bf16 dot products against score_band_lo_first's bound.
void random_errors(int blocks_per_class) {
  std::mt19937_64 rng(20261124);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const char* const classes[] = {"gaussian (keys N(0,1), centroids 0.3 N(0,1))", "wide exponents (2^U(-12,12) each)",
                                 "cancelling (alternating signs)", "one large product, small rest"};
  std::printf("\nrandom dot products of 64 coordinates: |score - exact x.c| / (2^-23 S), S = sum |x_j||c_j|\n");
  std::printf("  %-46s %-20s %10s %10s %10s %9s\n", "class", "order", "max", "p99.99", "median", "dots");
  double worst_lo_first = 0;
  for (int cls = 0; cls < 4; ++cls) {
    const Batch b = random_batch(blocks_per_class, false, [&](int j) {
      double x = 0, c = 0;
      switch (cls) {
        case 0: x = normal(rng); c = 0.3 * normal(rng); break;
        case 1: x = normal(rng) * std::ldexp(1.0, int(uni(rng) * 25) - 12); c = normal(rng) * std::ldexp(1.0, int(uni(rng) * 25) - 12); break;
        case 2: x = ((j & 1) ? -1 : 1) * (1 + 0.01 * normal(rng)); c = 1 + 0.01 * normal(rng); break;
        default:
          x = j == 0 ? 1 + uni(rng) : (1 + uni(rng)) * std::ldexp(1.0, -18 - int(uni(rng) * 9));
          c = 1 + uni(rng);
      }
      return std::make_pair(x, c);
    });
    for (int order : {LO_FIRST, INTERLEAVED}) {
      const std::vector<double> ratios =
          sorted_error_ratios(b, run(b, order), [](long double s, long double) { return std::ldexp(1.0L, -23) * s; });
      const double mx = ratios.back();
      if (order == LO_FIRST) worst_lo_first = std::max(worst_lo_first, mx);
      std::printf("  %-46s %-20s %10.3f %10.3f %10.4f %9zu\n", classes[cls], kOrderNames[order], mx,
                  ratios[size_t(ratios.size() * 0.9999)], ratios[ratios.size() / 2], ratios.size());
    }
  }
  std::printf("\nlo first, largest error seen: %.3f x 2^-23 S; score_band_lo_first's bound: 258.3 x 2^-23 S -> %s\n", worst_lo_first,
              worst_lo_first < 258.3 ? "within" : "EXCEEDED");
  if (!(worst_lo_first < 258.3)) std::exit(1);
}

// Part 3: f16 operands. First products at the bottom of f16's range, which build_ws.cu's f16 band
// assumes are kept: each row r of A holds one product (B hi = 1 or the pattern's value, lo = 0).
// Then random dot products against score_band_f16_lo_first's bound.
void f16_checks(int blocks_per_class) {
  struct Product {
    const char* what;
    float x, c;
  };
  const Product ps[] = {{"2^-24 x 1 (subnormal key)", std::ldexp(1.0f, -24), 1.0f},
                        {"1 x 2^-24 (subnormal centroid part)", 1.0f, std::ldexp(1.0f, -24)},
                        {"2^-24 x 2^-24 (subnormal x subnormal)", std::ldexp(1.0f, -24), std::ldexp(1.0f, -24)},
                        {"3 x 2^-20 (subnormal)", 3.0f, std::ldexp(1.0f, -20)},
                        {"65504 x 65504 (largest)", 65504.0f, 65504.0f}};
  Batch b(1, true);
  for (size_t i = 0; i < size_t(kTile); ++i) b.a[i] = b.hi[i] = b.lo[i] = 0;
  const int np = sizeof(ps) / sizeof(ps[0]);
  for (int r = 0; r < np; ++r) {
    b.a[r * kDim] = to_f16(ps[r].x);
    b.hi[r * kDim] = to_f16(ps[r].c);
  }
  const std::vector<float> out = run(b, HI_ONLY);
  std::printf("\nf16 products (hi only), got against exact:\n");
  bool kept = true;
  for (int r = 0; r < np; ++r) {
    const double exact = double(from_f16(b.a[r * kDim])) * double(from_f16(b.hi[r * kDim]));
    const float got = out[r * kRows + r];
    kept = kept && double(got) == exact;
    std::printf("  %-40s got %-14.8g exact %-14.8g %s\n", ps[r].what, got, exact, double(got) == exact ? "ok" : "DIFFERS");
  }
  std::mt19937_64 rng(20261125);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const char* const classes[] = {"gaussian (keys N(0,1), centroids 0.3 N(0,1))", "wide exponents (2^U(-20,10) each)",
                                 "small centroids (lo parts subnormal)", "subnormal keys (|x| < 2^-14)", "cancelling (alternating signs)"};
  std::printf("\nf16, lo first: |score - exact x.c| / bound, bound = 258.3 x 2^-23 S + 2^-25 sum |x_j|\n");
  std::printf("  %-46s %10s %10s %10s %9s\n", "class", "max", "p99.99", "median", "dots");
  double worst = 0;
  for (int cls = 0; cls < 5; ++cls) {
    const Batch bb = random_batch(blocks_per_class, true, [&](int j) {
      double x = 0, c = 0;
      switch (cls) {
        case 0: x = normal(rng); c = 0.3 * normal(rng); break;
        case 1: x = normal(rng) * std::ldexp(1.0, int(uni(rng) * 31) - 20); c = normal(rng) * std::ldexp(1.0, int(uni(rng) * 31) - 20); break;
        case 2: x = normal(rng); c = normal(rng) * std::ldexp(1.0, -10 - int(uni(rng) * 6)); break;
        case 3: x = normal(rng) * std::ldexp(1.0, -15 - int(uni(rng) * 8)); c = normal(rng); break;
        default: x = ((j & 1) ? -1 : 1) * (1 + 0.01 * normal(rng)); c = 1 + 0.01 * normal(rng);
      }
      return std::make_pair(x, c);
    });
    const std::vector<double> ratios = sorted_error_ratios(
        bb, run(bb, LO_FIRST), [](long double s, long double sx) { return 258.3L * std::ldexp(1.0L, -23) * s + std::ldexp(1.0L, -25) * sx; });
    worst = std::max(worst, ratios.back());
    std::printf("  %-46s %10.4f %10.4f %10.5f %9zu\n", classes[cls], ratios.back(), ratios[size_t(ratios.size() * 0.9999)],
                ratios[ratios.size() / 2], ratios.size());
  }
  std::printf("\nf16: subnormal products %s; largest error seen %.4f of the bound -> %s\n", kept ? "kept" : "NOT KEPT", worst,
              worst < 1.0 ? "within" : "EXCEEDED");
  if (!kept || !(worst < 1.0)) std::exit(1);
}

int main(int argc, char** argv) {
  int dev = 0;
  CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, dev));
  int driver = 0;
  CHECK(cudaDriverGetVersion(&driver));
  std::printf("device: %s (sm_%d%d), driver API %d\n\n", prop.name, prop.major, prop.minor, driver);
  if (prop.major != 9) {
    std::fprintf(stderr, "wgmma needs compute capability 9.0\n");
    return 2;
  }
  patterns();
  random_errors(argc > 1 ? std::atoi(argv[1]) : 64);
  f16_checks(argc > 1 ? std::atoi(argv[1]) : 64);
  return 0;
}
