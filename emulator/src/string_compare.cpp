// SSE4.2 PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM: like SSE floating point, the
// instruction itself runs on the host (the frontend checks the host has SSE4.2),
// which gives exactly the hardware's results for every aggregation, polarity and
// element format. The immediate must be an assembly-time constant, so the helper
// dispatches over all 256 values.
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/helpers.h"
#include "kiln/emulator/ir.h"

namespace kiln::emu {

namespace {

struct Outcome {
  uint32_t index = 0;
  __m128i mask{};
  bool cf = false, zf = false, sf = false, of = false;
};

template <int Imm>
__attribute__((target("sse4.2"))) void string_compare(unsigned form, __m128i a, __m128i b, uint32_t len_a,
                                                      uint32_t len_b, Outcome& o) {
  switch (form) {
    case 0:
      asm("pcmpestri %[imm], %[b], %[a]"
          : "=c"(o.index), "=@ccc"(o.cf), "=@ccz"(o.zf), "=@ccs"(o.sf), "=@cco"(o.of)
          : [a] "x"(a), [b] "x"(b), "a"(len_a), "d"(len_b), [imm] "i"(Imm));
      break;
    case 1:
      asm("pcmpestrm %[imm], %[b], %[a]\n\tmovdqa %%xmm0, %[m]"
          : [m] "=x"(o.mask), "=@ccc"(o.cf), "=@ccz"(o.zf), "=@ccs"(o.sf), "=@cco"(o.of)
          : [a] "x"(a), [b] "x"(b), "a"(len_a), "d"(len_b), [imm] "i"(Imm)
          : "xmm0");
      break;
    case 2:
      asm("pcmpistri %[imm], %[b], %[a]"
          : "=c"(o.index), "=@ccc"(o.cf), "=@ccz"(o.zf), "=@ccs"(o.sf), "=@cco"(o.of)
          : [a] "x"(a), [b] "x"(b), [imm] "i"(Imm));
      break;
    default:
      asm("pcmpistrm %[imm], %[b], %[a]\n\tmovdqa %%xmm0, %[m]"
          : [m] "=x"(o.mask), "=@ccc"(o.cf), "=@ccz"(o.zf), "=@ccs"(o.sf), "=@cco"(o.of)
          : [a] "x"(a), [b] "x"(b), [imm] "i"(Imm)
          : "xmm0");
      break;
  }
}

template <int... I>
void dispatch(unsigned imm, unsigned form, __m128i a, __m128i b, uint32_t len_a, uint32_t len_b, Outcome& o,
              std::integer_sequence<int, I...>) {
  (void)((imm == static_cast<unsigned>(I) ? (string_compare<I>(form, a, b, len_a, len_b, o), true) : false) || ...);
}

// Explicit lengths are the absolute value of RAX/RDX (EAX/EDX without REX.W), saturated to the element count.
uint32_t explicit_length(uint64_t reg, bool wide, unsigned elements) {
  const int64_t v = wide ? static_cast<int64_t>(reg) : static_cast<int64_t>(static_cast<int32_t>(reg));
  const uint64_t magnitude = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  return static_cast<uint32_t>(magnitude > elements ? elements : magnitude);
}

}  // namespace

uint64_t helper_string_compare(Cpu& cpu, uint64_t insn, uint64_t lo, uint64_t hi, uint64_t) {
  CpuState& st = cpu.state;
  const unsigned reg = insn & 0xff, imm = (insn >> 8) & 0xff, form = (insn >> 16) & 3;
  const bool wide = (insn >> 18) & 1;
  const unsigned elements = imm & 1 ? 8 : 16;
  __m128i a, b;
  std::memcpy(&a, &st.xmm[reg], 16);
  const uint64_t src[2] = {lo, hi};
  std::memcpy(&b, src, 16);
  const uint32_t len_a = explicit_length(st.regs[RAX], wide, elements);
  const uint32_t len_b = explicit_length(st.regs[RDX], wide, elements);
  Outcome o;
  dispatch(imm, form, a, b, len_a, len_b, o, std::make_integer_sequence<int, 256>{});
  if (form == 0 || form == 2) {
    st.regs[RCX] = o.index;
  } else {
    uint64_t mask[2];
    std::memcpy(mask, &o.mask, 16);
    st.xmm[0] = Xmm{mask[0], mask[1]};
  }
  // CF ZF SF OF from the comparison; AF and PF are cleared.
  st.cc_op = ir::cc_op(ir::CcKind::Eflags, ir::Type::I64);
  st.cc_dst = (o.cf ? rflags::CF : 0) | (o.zf ? rflags::ZF : 0) | (o.sf ? rflags::SF : 0) | (o.of ? rflags::OF : 0);
  return 0;
}

}  // namespace kiln::emu
