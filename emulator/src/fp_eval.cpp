#include "kiln/emulator/fp_eval.h"

#include <immintrin.h>

#include <cstring>
#include <iterator>
#include <utility>

namespace kiln::emu::ir {

namespace {

// Passes a value through an empty volatile asm. Each operation below consumes
// its inputs through these, so the compiler cannot speculate an SSE instruction
// of another switch case (which would raise that case's MXCSR flags).
template <typename T>
__attribute__((always_inline)) inline T opaque(T v) {
  asm volatile("" : "+x"(v));
  return v;
}

__m128 ps(const uint64_t v[2]) { return _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))); }
__m128d pd(const uint64_t v[2]) { return _mm_castsi128_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))); }
__m128i pi(const uint64_t v[2]) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(v)); }
void store(uint64_t out[2], __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(out), v); }
void store(uint64_t out[2], __m128 v) { store(out, _mm_castps_si128(v)); }
void store(uint64_t out[2], __m128d v) { store(out, _mm_castpd_si128(v)); }

// CMPPS/CMPSS predicate 0..7 (SSE2 encodings only).
__m128 cmp_ps(__m128 a, __m128 b, unsigned p) {
  switch (p & 7) {
    case 0: return _mm_cmpeq_ps(opaque(a), opaque(b));
    case 1: return _mm_cmplt_ps(opaque(a), opaque(b));
    case 2: return _mm_cmple_ps(opaque(a), opaque(b));
    case 3: return _mm_cmpunord_ps(opaque(a), opaque(b));
    case 4: return _mm_cmpneq_ps(opaque(a), opaque(b));
    case 5: return _mm_cmpnlt_ps(opaque(a), opaque(b));
    case 6: return _mm_cmpnle_ps(opaque(a), opaque(b));
    default: return _mm_cmpord_ps(opaque(a), opaque(b));
  }
}
__m128 cmp_ss(__m128 a, __m128 b, unsigned p) {
  switch (p & 7) {
    case 0: return _mm_cmpeq_ss(opaque(a), opaque(b));
    case 1: return _mm_cmplt_ss(opaque(a), opaque(b));
    case 2: return _mm_cmple_ss(opaque(a), opaque(b));
    case 3: return _mm_cmpunord_ss(opaque(a), opaque(b));
    case 4: return _mm_cmpneq_ss(opaque(a), opaque(b));
    case 5: return _mm_cmpnlt_ss(opaque(a), opaque(b));
    case 6: return _mm_cmpnle_ss(opaque(a), opaque(b));
    default: return _mm_cmpord_ss(opaque(a), opaque(b));
  }
}
__m128d cmp_pd(__m128d a, __m128d b, unsigned p) {
  switch (p & 7) {
    case 0: return _mm_cmpeq_pd(opaque(a), opaque(b));
    case 1: return _mm_cmplt_pd(opaque(a), opaque(b));
    case 2: return _mm_cmple_pd(opaque(a), opaque(b));
    case 3: return _mm_cmpunord_pd(opaque(a), opaque(b));
    case 4: return _mm_cmpneq_pd(opaque(a), opaque(b));
    case 5: return _mm_cmpnlt_pd(opaque(a), opaque(b));
    case 6: return _mm_cmpnle_pd(opaque(a), opaque(b));
    default: return _mm_cmpord_pd(opaque(a), opaque(b));
  }
}
__m128d cmp_sd(__m128d a, __m128d b, unsigned p) {
  switch (p & 7) {
    case 0: return _mm_cmpeq_sd(opaque(a), opaque(b));
    case 1: return _mm_cmplt_sd(opaque(a), opaque(b));
    case 2: return _mm_cmple_sd(opaque(a), opaque(b));
    case 3: return _mm_cmpunord_sd(opaque(a), opaque(b));
    case 4: return _mm_cmpneq_sd(opaque(a), opaque(b));
    case 5: return _mm_cmpnlt_sd(opaque(a), opaque(b));
    case 6: return _mm_cmpnle_sd(opaque(a), opaque(b));
    default: return _mm_cmpord_sd(opaque(a), opaque(b));
  }
}

// COMISS/UCOMISS/COMISD/UCOMISD run as the instruction itself (the intrinsics
// may be compiled to the other variant, which raises different MXCSR flags).
// Returns the RFLAGS bits ZF, PF, CF it produced (OF, SF, AF are cleared).
uint64_t compare(const uint64_t a64[2], const uint64_t b64[2], int kind) {
  const __m128i a = pi(a64), b = pi(b64);
  uint8_t zf, pf, cf;
  switch (kind) {
    case 0: asm volatile("comiss %3, %4\n\tsetz %0\n\tsetp %1\n\tsetc %2" : "=r"(zf), "=r"(pf), "=r"(cf) : "x"(b), "x"(a) : "cc"); break;
    case 1: asm volatile("ucomiss %3, %4\n\tsetz %0\n\tsetp %1\n\tsetc %2" : "=r"(zf), "=r"(pf), "=r"(cf) : "x"(b), "x"(a) : "cc"); break;
    case 2: asm volatile("comisd %3, %4\n\tsetz %0\n\tsetp %1\n\tsetc %2" : "=r"(zf), "=r"(pf), "=r"(cf) : "x"(b), "x"(a) : "cc"); break;
    default: asm volatile("ucomisd %3, %4\n\tsetz %0\n\tsetp %1\n\tsetc %2" : "=r"(zf), "=r"(pf), "=r"(cf) : "x"(b), "x"(a) : "cc"); break;
  }
  return (zf ? 0x40u : 0) | (pf ? 0x04u : 0) | (cf ? 0x01u : 0);
}

// SSE3 and SSE4.1 instructions, compiled for those extensions only here; callers
// check the host has them (has_sse41()).
__attribute__((target("sse3"))) void sse3_op(FpOp op, __m128 a, __m128 b, __m128d ad, __m128d bd, uint64_t r[2]) {
  switch (op) {
    case FpOp::AddSubPS: store(r, _mm_addsub_ps(opaque(a), opaque(b))); break;
    case FpOp::AddSubPD: store(r, _mm_addsub_pd(opaque(ad), opaque(bd))); break;
    case FpOp::HAddPS: store(r, _mm_hadd_ps(opaque(a), opaque(b))); break;
    case FpOp::HAddPD: store(r, _mm_hadd_pd(opaque(ad), opaque(bd))); break;
    case FpOp::HSubPS: store(r, _mm_hsub_ps(opaque(a), opaque(b))); break;
    default: store(r, _mm_hsub_pd(opaque(ad), opaque(bd))); break;
  }
}

// ROUND* take their immediate at compile time: dispatch over the 16 meaningful values.
template <int Imm>
__attribute__((target("sse4.1"))) void round_imm(FpOp op, __m128 a, __m128 b, __m128d ad, __m128d bd, uint64_t r[2]) {
  switch (op) {
    case FpOp::RoundPS: store(r, _mm_round_ps(opaque(b), Imm)); break;
    case FpOp::RoundPD: store(r, _mm_round_pd(opaque(bd), Imm)); break;
    case FpOp::RoundSS: store(r, _mm_round_ss(opaque(a), opaque(b), Imm)); break;
    default: store(r, _mm_round_sd(opaque(ad), opaque(bd), Imm)); break;
  }
}
template <int... I>
void round_dispatch(unsigned imm, FpOp op, __m128 a, __m128 b, __m128d ad, __m128d bd, uint64_t r[2],
                    std::integer_sequence<int, I...>) {
  (void)((imm == static_cast<unsigned>(I) ? (round_imm<I>(op, a, b, ad, bd, r), true) : false) || ...);
}

// DPPS/DPPD likewise, over all 256 immediates.
template <int Imm>
__attribute__((target("sse4.1"))) void dp_imm(FpOp op, __m128 a, __m128 b, __m128d ad, __m128d bd, uint64_t r[2]) {
  if (op == FpOp::DpPS) store(r, _mm_dp_ps(opaque(a), opaque(b), Imm));
  else store(r, _mm_dp_pd(opaque(ad), opaque(bd), Imm));
}
template <int... I>
void dp_dispatch(unsigned imm, FpOp op, __m128 a, __m128 b, __m128d ad, __m128d bd, uint64_t r[2],
                 std::integer_sequence<int, I...>) {
  (void)((imm == static_cast<unsigned>(I) ? (dp_imm<I>(op, a, b, ad, bd, r), true) : false) || ...);
}

}  // namespace

bool host_has_sse41() { return __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("sse3"); }
bool host_has_sse42() { return host_has_sse41() && __builtin_cpu_supports("sse4.2"); }

const char* fp_op_name(FpOp op) {
  static constexpr const char* kNames[] = {
#define KILN_FP_OP(name, text) text,
#include "kiln/emulator/fp_ops.inc"
#undef KILN_FP_OP
  };
  return static_cast<size_t>(op) < std::size(kNames) ? kNames[static_cast<size_t>(op)] : "?";
}

// Kept out of line and unoptimisable across the MXCSR switch: the operations
// must execute between the two LDMXCSR instructions.
__attribute__((noinline)) bool eval_fp(FpOp op, uint32_t aux, const uint64_t a64[2], const uint64_t b64[2],
                                       uint64_t out[2], uint32_t& mxcsr) {
  const uint32_t host = _mm_getcsr();
  // Guest control bits with every exception masked and the sticky flags cleared.
  _mm_setcsr((mxcsr & ~0x3fu) | 0x1f80u);
  asm volatile("" ::: "memory");
  const __m128 a = ps(a64), b = ps(b64);
  const __m128d ad = pd(a64), bd = pd(b64);
  const __m128i bi = pi(b64);
  uint64_t r[2] = {a64[0], a64[1]};
  const int64_t b_int64 = static_cast<int64_t>(b64[0]);
  const int32_t b_int32 = static_cast<int32_t>(b64[0]);
  switch (op) {
    case FpOp::AddPS: store(r, _mm_add_ps(opaque(a), opaque(b))); break;
    case FpOp::SubPS: store(r, _mm_sub_ps(opaque(a), opaque(b))); break;
    case FpOp::MulPS: store(r, _mm_mul_ps(opaque(a), opaque(b))); break;
    case FpOp::DivPS: store(r, _mm_div_ps(opaque(a), opaque(b))); break;
    case FpOp::MinPS: store(r, _mm_min_ps(opaque(a), opaque(b))); break;
    case FpOp::MaxPS: store(r, _mm_max_ps(opaque(a), opaque(b))); break;
    case FpOp::SqrtPS: store(r, _mm_sqrt_ps(opaque(b))); break;
    case FpOp::AddSS: store(r, _mm_add_ss(opaque(a), opaque(b))); break;
    case FpOp::SubSS: store(r, _mm_sub_ss(opaque(a), opaque(b))); break;
    case FpOp::MulSS: store(r, _mm_mul_ss(opaque(a), opaque(b))); break;
    case FpOp::DivSS: store(r, _mm_div_ss(opaque(a), opaque(b))); break;
    case FpOp::MinSS: store(r, _mm_min_ss(opaque(a), opaque(b))); break;
    case FpOp::MaxSS: store(r, _mm_max_ss(opaque(a), opaque(b))); break;
    case FpOp::SqrtSS: store(r, _mm_move_ss(opaque(a), _mm_sqrt_ss(opaque(b)))); break;
    case FpOp::AddPD: store(r, _mm_add_pd(opaque(ad), opaque(bd))); break;
    case FpOp::SubPD: store(r, _mm_sub_pd(opaque(ad), opaque(bd))); break;
    case FpOp::MulPD: store(r, _mm_mul_pd(opaque(ad), opaque(bd))); break;
    case FpOp::DivPD: store(r, _mm_div_pd(opaque(ad), opaque(bd))); break;
    case FpOp::MinPD: store(r, _mm_min_pd(opaque(ad), opaque(bd))); break;
    case FpOp::MaxPD: store(r, _mm_max_pd(opaque(ad), opaque(bd))); break;
    case FpOp::SqrtPD: store(r, _mm_sqrt_pd(opaque(bd))); break;
    case FpOp::AddSD: store(r, _mm_add_sd(opaque(ad), opaque(bd))); break;
    case FpOp::SubSD: store(r, _mm_sub_sd(opaque(ad), opaque(bd))); break;
    case FpOp::MulSD: store(r, _mm_mul_sd(opaque(ad), opaque(bd))); break;
    case FpOp::DivSD: store(r, _mm_div_sd(opaque(ad), opaque(bd))); break;
    case FpOp::MinSD: store(r, _mm_min_sd(opaque(ad), opaque(bd))); break;
    case FpOp::MaxSD: store(r, _mm_max_sd(opaque(ad), opaque(bd))); break;
    case FpOp::SqrtSD: store(r, _mm_sqrt_sd(opaque(ad), opaque(bd))); break;
    case FpOp::CmpPS: store(r, cmp_ps(opaque(a), opaque(b), aux)); break;
    case FpOp::CmpSS: store(r, cmp_ss(opaque(a), opaque(b), aux)); break;
    case FpOp::CmpPD: store(r, cmp_pd(opaque(ad), opaque(bd), aux)); break;
    case FpOp::CmpSD: store(r, cmp_sd(opaque(ad), opaque(bd), aux)); break;
    case FpOp::ComiSS: r[0] = compare(a64, b64, 0); r[1] = 0; break;
    case FpOp::UcomiSS: r[0] = compare(a64, b64, 1); r[1] = 0; break;
    case FpOp::ComiSD: r[0] = compare(a64, b64, 2); r[1] = 0; break;
    case FpOp::UcomiSD: r[0] = compare(a64, b64, 3); r[1] = 0; break;
    case FpOp::CvtDQ2PS: store(r, _mm_cvtepi32_ps(opaque(bi))); break;
    case FpOp::CvtPS2DQ: store(r, _mm_cvtps_epi32(opaque(b))); break;
    case FpOp::CvtTPS2DQ: store(r, _mm_cvttps_epi32(opaque(b))); break;
    case FpOp::CvtPS2PD: store(r, _mm_cvtps_pd(opaque(b))); break;
    case FpOp::CvtPD2PS: store(r, _mm_cvtpd_ps(opaque(bd))); break;
    case FpOp::CvtSS2SD: store(r, _mm_cvtss_sd(opaque(ad), opaque(b))); break;
    case FpOp::CvtSD2SS: store(r, _mm_cvtsd_ss(opaque(a), opaque(bd))); break;
    case FpOp::CvtDQ2PD: store(r, _mm_cvtepi32_pd(opaque(bi))); break;
    case FpOp::CvtPD2DQ: store(r, _mm_cvtpd_epi32(opaque(bd))); break;
    case FpOp::CvtTPD2DQ: store(r, _mm_cvttpd_epi32(opaque(bd))); break;
    case FpOp::CvtSI2SS32: store(r, _mm_cvtsi32_ss(opaque(a), b_int32)); break;
    case FpOp::CvtSI2SS64: store(r, _mm_cvtsi64_ss(opaque(a), b_int64)); break;
    case FpOp::CvtSI2SD32: store(r, _mm_cvtsi32_sd(opaque(ad), b_int32)); break;
    case FpOp::CvtSI2SD64: store(r, _mm_cvtsi64_sd(opaque(ad), b_int64)); break;
    case FpOp::CvtSS2SI32: r[0] = static_cast<uint32_t>(_mm_cvtss_si32(opaque(b))); r[1] = 0; break;
    case FpOp::CvtSS2SI64: r[0] = static_cast<uint64_t>(_mm_cvtss_si64(opaque(b))); r[1] = 0; break;
    case FpOp::CvtTSS2SI32: r[0] = static_cast<uint32_t>(_mm_cvttss_si32(opaque(b))); r[1] = 0; break;
    case FpOp::CvtTSS2SI64: r[0] = static_cast<uint64_t>(_mm_cvttss_si64(opaque(b))); r[1] = 0; break;
    case FpOp::CvtSD2SI32: r[0] = static_cast<uint32_t>(_mm_cvtsd_si32(opaque(bd))); r[1] = 0; break;
    case FpOp::CvtSD2SI64: r[0] = static_cast<uint64_t>(_mm_cvtsd_si64(opaque(bd))); r[1] = 0; break;
    case FpOp::CvtTSD2SI32: r[0] = static_cast<uint32_t>(_mm_cvttsd_si32(opaque(bd))); r[1] = 0; break;
    case FpOp::CvtTSD2SI64: r[0] = static_cast<uint64_t>(_mm_cvttsd_si64(opaque(bd))); r[1] = 0; break;
    case FpOp::RcpPS: store(r, _mm_rcp_ps(opaque(b))); break;
    case FpOp::RcpSS: store(r, _mm_move_ss(opaque(a), _mm_rcp_ss(opaque(b)))); break;
    case FpOp::RsqrtPS: store(r, _mm_rsqrt_ps(opaque(b))); break;
    case FpOp::RsqrtSS: store(r, _mm_move_ss(opaque(a), _mm_rsqrt_ss(opaque(b)))); break;
    case FpOp::AddSubPS: case FpOp::AddSubPD: case FpOp::HAddPS: case FpOp::HAddPD: case FpOp::HSubPS:
    case FpOp::HSubPD:
      sse3_op(op, a, b, ad, bd, r);
      break;
    case FpOp::RoundPS: case FpOp::RoundPD: case FpOp::RoundSS: case FpOp::RoundSD:
      round_dispatch(aux & 15, op, a, b, ad, bd, r, std::make_integer_sequence<int, 16>{});
      break;
    case FpOp::DpPS: case FpOp::DpPD:
      dp_dispatch(aux & 0xff, op, a, b, ad, bd, r, std::make_integer_sequence<int, 256>{});
      break;
    case FpOp::Count: break;
  }
  asm volatile("" : : "r"(r) : "memory");  // r escapes: its stores happen before the flags are read
  const uint32_t raised = _mm_getcsr() & 0x3fu;
  _mm_setcsr(host);
  out[0] = r[0];
  out[1] = r[1];
  // An exception whose mask bit (flag << 7) is clear faults (#XM) and leaves the destination alone.
  const uint32_t unmasked = raised & ~(mxcsr >> 7) & 0x3fu;
  if (unmasked) {
    mxcsr |= raised;
    return false;
  }
  mxcsr |= raised;
  return true;
}

}  // namespace kiln::emu::ir
