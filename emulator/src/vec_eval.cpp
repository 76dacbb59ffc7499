#include "kiln/emulator/vec_eval.h"

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <type_traits>

namespace kiln::emu::ir {

namespace {

struct V {
  uint8_t b[16];
  template <typename T>
  T get(unsigned i) const {
    T v;
    std::memcpy(&v, b + i * sizeof(T), sizeof(T));
    return v;
  }
  template <typename T>
  void set(unsigned i, T v) {
    std::memcpy(b + i * sizeof(T), &v, sizeof(T));
  }
};

template <typename T, typename F>
V lanes(const V& a, const V& b, F f) {
  V r;
  for (unsigned i = 0; i < 16 / sizeof(T); ++i) r.set<T>(i, static_cast<T>(f(a.get<T>(i), b.get<T>(i))));
  return r;
}

template <typename T>
T saturate(int64_t v) {
  constexpr int64_t lo = static_cast<int64_t>(std::numeric_limits<T>::min());
  constexpr int64_t hi = static_cast<int64_t>(std::numeric_limits<T>::max());
  return static_cast<T>(std::clamp(v, lo, hi));
}

template <typename From, typename To>
V extend(const V& b) {
  V r;
  for (unsigned i = 0; i < 16 / sizeof(To); ++i) r.set<To>(i, static_cast<To>(b.get<From>(i)));
  return r;
}

template <typename T>
V sign(const V& a, const V& b) {
  V r;
  for (unsigned i = 0; i < 16 / sizeof(T); ++i) {
    T x = a.get<T>(i), y = b.get<T>(i);
    r.set<T>(i, static_cast<T>(y < 0 ? -x : y == 0 ? 0 : x));
  }
  return r;
}

template <typename T>
V horizontal(const V& a, const V& b, bool add) {
  V r;
  const unsigned n = 16 / sizeof(T) / 2;
  for (unsigned i = 0; i < n; ++i) {
    T x0 = a.get<T>(2 * i), x1 = a.get<T>(2 * i + 1), y0 = b.get<T>(2 * i), y1 = b.get<T>(2 * i + 1);
    r.set<T>(i, static_cast<T>(add ? x0 + x1 : x0 - x1));
    r.set<T>(n + i, static_cast<T>(add ? y0 + y1 : y0 - y1));
  }
  return r;
}

template <typename T>
V unpack(const V& a, const V& b, bool high) {
  V r;
  const unsigned n = 8 / sizeof(T), base = high ? n : 0;
  for (unsigned i = 0; i < n; ++i) {
    r.set<T>(2 * i, a.get<T>(base + i));
    r.set<T>(2 * i + 1, b.get<T>(base + i));
  }
  return r;
}

template <typename T>
V shift(const V& a, uint64_t count, int kind) {  // 0 left, 1 logical right, 2 arithmetic right
  constexpr unsigned bits = sizeof(T) * 8;
  V r;
  for (unsigned i = 0; i < 16 / sizeof(T); ++i) {
    T v = a.get<T>(i);
    if (kind == 2) {
      using S = std::make_signed_t<T>;
      unsigned n = count >= bits ? bits - 1 : static_cast<unsigned>(count);
      r.set<T>(i, static_cast<T>(static_cast<S>(v) >> n));
    } else if (count >= bits) {
      r.set<T>(i, 0);
    } else {
      r.set<T>(i, static_cast<T>(kind == 0 ? v << count : v >> count));
    }
  }
  return r;
}

}  // namespace

const char* vec_op_name(VecOp op) {
  static constexpr const char* kNames[] = {
#define KILN_VEC_OP(name, text) text,
#include "kiln/emulator/vec_ops.inc"
#undef KILN_VEC_OP
  };
  return static_cast<size_t>(op) < std::size(kNames) ? kNames[static_cast<size_t>(op)] : "?";
}

void eval_vec(VecOp op, uint32_t aux, const uint64_t a64[2], const uint64_t b64[2], uint64_t out[2]) {
  V a, b, r{};
  std::memcpy(a.b, a64, 16);
  std::memcpy(b.b, b64, 16);
  using u8 = uint8_t;
  using u16 = uint16_t;
  using u32 = uint32_t;
  using u64 = uint64_t;
  using s8 = int8_t;
  using s16 = int16_t;
  using s32 = int32_t;
  switch (op) {
    case VecOp::And: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x & y; }); break;
    case VecOp::Andn: r = lanes<u64>(a, b, [](u64 x, u64 y) { return ~x & y; }); break;
    case VecOp::Or: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x | y; }); break;
    case VecOp::Xor: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x ^ y; }); break;
    case VecOp::AddB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return x + y; }); break;
    case VecOp::AddW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return x + y; }); break;
    case VecOp::AddD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return x + y; }); break;
    case VecOp::AddQ: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x + y; }); break;
    case VecOp::SubB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return x - y; }); break;
    case VecOp::SubW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return x - y; }); break;
    case VecOp::SubD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return x - y; }); break;
    case VecOp::SubQ: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x - y; }); break;
    case VecOp::AddUsB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return std::min(255, x + y); }); break;
    case VecOp::AddUsW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return std::min(65535, x + y); }); break;
    case VecOp::AddSsB: r = lanes<s8>(a, b, [](s8 x, s8 y) { return saturate<s8>(x + y); }); break;
    case VecOp::AddSsW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return saturate<s16>(x + y); }); break;
    case VecOp::SubUsB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return std::max(0, x - y); }); break;
    case VecOp::SubUsW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return std::max(0, x - y); }); break;
    case VecOp::SubSsB: r = lanes<s8>(a, b, [](s8 x, s8 y) { return saturate<s8>(x - y); }); break;
    case VecOp::SubSsW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return saturate<s16>(x - y); }); break;
    case VecOp::CmpEqB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return x == y ? 0xff : 0; }); break;
    case VecOp::CmpEqW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return x == y ? 0xffff : 0; }); break;
    case VecOp::CmpEqD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return x == y ? 0xffffffffu : 0; }); break;
    case VecOp::CmpGtB: r = lanes<s8>(a, b, [](s8 x, s8 y) { return x > y ? -1 : 0; }); break;
    case VecOp::CmpGtW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return x > y ? -1 : 0; }); break;
    case VecOp::CmpGtD: r = lanes<s32>(a, b, [](s32 x, s32 y) { return x > y ? -1 : 0; }); break;
    case VecOp::MinUB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return std::min(x, y); }); break;
    case VecOp::MaxUB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return std::max(x, y); }); break;
    case VecOp::MinSW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return std::min(x, y); }); break;
    case VecOp::MaxSW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return std::max(x, y); }); break;
    case VecOp::MulLoW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return static_cast<u16>(x * y); }); break;
    case VecOp::MulHiW: r = lanes<s16>(a, b, [](s16 x, s16 y) { return static_cast<s16>((x * y) >> 16); }); break;
    case VecOp::MulHiUW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return static_cast<u16>((uint32_t{x} * y) >> 16); }); break;
    case VecOp::MulUDQ:
      for (unsigned i = 0; i < 2; ++i) r.set<u64>(i, u64{a.get<u32>(2 * i)} * b.get<u32>(2 * i));
      break;
    case VecOp::AvgB: r = lanes<u8>(a, b, [](u8 x, u8 y) { return (x + y + 1) >> 1; }); break;
    case VecOp::AvgW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return (x + y + 1) >> 1; }); break;
    case VecOp::SadBW:
      for (unsigned i = 0; i < 2; ++i) {
        unsigned sum = 0;
        for (unsigned j = 0; j < 8; ++j) sum += static_cast<unsigned>(std::abs(a.get<u8>(8 * i + j) - b.get<u8>(8 * i + j)));
        r.set<u64>(i, sum);
      }
      break;
    case VecOp::MAddWD:
      for (unsigned i = 0; i < 4; ++i)
        r.set<u32>(i, static_cast<u32>(a.get<s16>(2 * i) * b.get<s16>(2 * i) + a.get<s16>(2 * i + 1) * b.get<s16>(2 * i + 1)));
      break;
    case VecOp::UnpackLoB: r = unpack<u8>(a, b, false); break;
    case VecOp::UnpackLoW: r = unpack<u16>(a, b, false); break;
    case VecOp::UnpackLoD: case VecOp::UnpackLoPS: r = unpack<u32>(a, b, false); break;
    case VecOp::UnpackLoQ: r = unpack<u64>(a, b, false); break;
    case VecOp::UnpackHiB: r = unpack<u8>(a, b, true); break;
    case VecOp::UnpackHiW: r = unpack<u16>(a, b, true); break;
    case VecOp::UnpackHiD: case VecOp::UnpackHiPS: r = unpack<u32>(a, b, true); break;
    case VecOp::UnpackHiQ: r = unpack<u64>(a, b, true); break;
    case VecOp::PackSsWB:
      for (unsigned i = 0; i < 8; ++i) {
        r.set<s8>(i, saturate<s8>(a.get<s16>(i)));
        r.set<s8>(8 + i, saturate<s8>(b.get<s16>(i)));
      }
      break;
    case VecOp::PackUsWB:
      for (unsigned i = 0; i < 8; ++i) {
        r.set<u8>(i, static_cast<u8>(std::clamp<int>(a.get<s16>(i), 0, 255)));
        r.set<u8>(8 + i, static_cast<u8>(std::clamp<int>(b.get<s16>(i), 0, 255)));
      }
      break;
    case VecOp::PackSsDW:
      for (unsigned i = 0; i < 4; ++i) {
        r.set<s16>(i, saturate<s16>(a.get<s32>(i)));
        r.set<s16>(4 + i, saturate<s16>(b.get<s32>(i)));
      }
      break;
    case VecOp::ShufD:  // PSHUFD: lanes of b (the source) picked by aux
      for (unsigned i = 0; i < 4; ++i) r.set<u32>(i, b.get<u32>((aux >> (2 * i)) & 3));
      break;
    case VecOp::ShufPS:  // SHUFPS: two lanes from a, two from b
      for (unsigned i = 0; i < 4; ++i) r.set<u32>(i, (i < 2 ? a : b).get<u32>((aux >> (2 * i)) & 3));
      break;
    case VecOp::ShufLW:
      r = b;
      for (unsigned i = 0; i < 4; ++i) r.set<u16>(i, b.get<u16>((aux >> (2 * i)) & 3));
      break;
    case VecOp::ShufHW:
      r = b;
      for (unsigned i = 0; i < 4; ++i) r.set<u16>(4 + i, b.get<u16>(4 + ((aux >> (2 * i)) & 3)));
      break;
    case VecOp::SllW: r = shift<u16>(a, b64[0], 0); break;
    case VecOp::SllD: r = shift<u32>(a, b64[0], 0); break;
    case VecOp::SllQ: r = shift<u64>(a, b64[0], 0); break;
    case VecOp::SrlW: r = shift<u16>(a, b64[0], 1); break;
    case VecOp::SrlD: r = shift<u32>(a, b64[0], 1); break;
    case VecOp::SrlQ: r = shift<u64>(a, b64[0], 1); break;
    case VecOp::SraW: r = shift<u16>(a, b64[0], 2); break;
    case VecOp::SraD: r = shift<u32>(a, b64[0], 2); break;
    case VecOp::SllDQ:
      for (unsigned i = 0; i < 16; ++i) r.b[i] = (aux <= i && aux < 16) ? a.b[i - aux] : 0;
      break;
    case VecOp::SrlDQ:
      for (unsigned i = 0; i < 16; ++i) r.b[i] = (i + aux < 16) ? a.b[i + aux] : 0;
      break;
    case VecOp::MovMskB: {
      u64 m = 0;
      for (unsigned i = 0; i < 16; ++i) m |= u64{static_cast<u64>(a.b[i] >> 7)} << i;
      r.set<u64>(0, m);
      break;
    }
    case VecOp::MovMskPS: {
      u64 m = 0;
      for (unsigned i = 0; i < 4; ++i) m |= u64{a.get<u32>(i) >> 31} << i;
      r.set<u64>(0, m);
      break;
    }
    case VecOp::MovMskPD: r.set<u64>(0, (a.get<u64>(0) >> 63) | ((a.get<u64>(1) >> 63) << 1)); break;
    case VecOp::ShufB:
      for (unsigned i = 0; i < 16; ++i) r.b[i] = (b.b[i] & 0x80) ? 0 : a.b[b.b[i] & 15];
      break;
    case VecOp::AbsB: r = lanes<s8>(b, b, [](s8 x, s8) { return x < 0 ? -x : x; }); break;
    case VecOp::AbsW: r = lanes<s16>(b, b, [](s16 x, s16) { return x < 0 ? -x : x; }); break;
    case VecOp::AbsD: r = lanes<s32>(b, b, [](s32 x, s32) { return x < 0 ? static_cast<s32>(0u - static_cast<u32>(x)) : x; }); break;
    case VecOp::SignB: r = sign<s8>(a, b); break;
    case VecOp::SignW: r = sign<s16>(a, b); break;
    case VecOp::SignD: {
      for (unsigned i = 0; i < 4; ++i) {
        s32 y = b.get<s32>(i);
        u32 x = a.get<u32>(i);
        r.set<u32>(i, y < 0 ? 0u - x : y == 0 ? 0u : x);
      }
      break;
    }
    case VecOp::AlignR: {  // (a:b) >> (aux * 8), 32-byte concatenation with a high
      uint8_t cat[32];
      std::memcpy(cat, b.b, 16);
      std::memcpy(cat + 16, a.b, 16);
      for (unsigned i = 0; i < 16; ++i) r.b[i] = aux + i < 32 ? cat[aux + i] : 0;
      break;
    }
    case VecOp::MinSB: r = lanes<s8>(a, b, [](s8 x, s8 y) { return std::min(x, y); }); break;
    case VecOp::MaxSB: r = lanes<s8>(a, b, [](s8 x, s8 y) { return std::max(x, y); }); break;
    case VecOp::MinUW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return std::min(x, y); }); break;
    case VecOp::MaxUW: r = lanes<u16>(a, b, [](u16 x, u16 y) { return std::max(x, y); }); break;
    case VecOp::MinSD: r = lanes<s32>(a, b, [](s32 x, s32 y) { return std::min(x, y); }); break;
    case VecOp::MaxSD: r = lanes<s32>(a, b, [](s32 x, s32 y) { return std::max(x, y); }); break;
    case VecOp::MinUD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return std::min(x, y); }); break;
    case VecOp::MaxUD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return std::max(x, y); }); break;
    case VecOp::MulLoD: r = lanes<u32>(a, b, [](u32 x, u32 y) { return x * y; }); break;
    case VecOp::MulDQ:
      for (unsigned i = 0; i < 2; ++i)
        r.set<int64_t>(i, int64_t{a.get<s32>(2 * i)} * int64_t{b.get<s32>(2 * i)});
      break;
    case VecOp::CmpEqQ: r = lanes<u64>(a, b, [](u64 x, u64 y) { return x == y ? ~u64{0} : 0; }); break;
    case VecOp::CmpGtQ: r = lanes<int64_t>(a, b, [](int64_t x, int64_t y) { return x > y ? int64_t{-1} : 0; }); break;
    case VecOp::PackUsDW:
      for (unsigned i = 0; i < 4; ++i) {
        r.set<u16>(i, static_cast<u16>(std::clamp<s32>(a.get<s32>(i), 0, 65535)));
        r.set<u16>(4 + i, static_cast<u16>(std::clamp<s32>(b.get<s32>(i), 0, 65535)));
      }
      break;
    case VecOp::BlendW:
      for (unsigned i = 0; i < 8; ++i) r.set<u16>(i, ((aux >> i) & 1) ? b.get<u16>(i) : a.get<u16>(i));
      break;
    case VecOp::MulHRSW:
      r = lanes<s16>(a, b, [](s16 x, s16 y) { return static_cast<s16>((((int32_t{x} * y) >> 14) + 1) >> 1); });
      break;
    case VecOp::MAddUBSW:
      for (unsigned i = 0; i < 8; ++i)
        r.set<s16>(i, saturate<s16>(int32_t{a.get<u8>(2 * i)} * b.get<s8>(2 * i) +
                                    int32_t{a.get<u8>(2 * i + 1)} * b.get<s8>(2 * i + 1)));
      break;
    case VecOp::HAddW: r = horizontal<u16>(a, b, true); break;
    case VecOp::HAddD: r = horizontal<u32>(a, b, true); break;
    case VecOp::HSubW: r = horizontal<u16>(a, b, false); break;
    case VecOp::HSubD: r = horizontal<u32>(a, b, false); break;
    case VecOp::ZxBW: r = extend<u8, u16>(b); break;
    case VecOp::ZxBD: r = extend<u8, u32>(b); break;
    case VecOp::ZxBQ: r = extend<u8, u64>(b); break;
    case VecOp::ZxWD: r = extend<u16, u32>(b); break;
    case VecOp::ZxWQ: r = extend<u16, u64>(b); break;
    case VecOp::ZxDQ: r = extend<u32, u64>(b); break;
    case VecOp::SxBW: r = extend<s8, s16>(b); break;
    case VecOp::SxBD: r = extend<s8, s32>(b); break;
    case VecOp::SxBQ: r = extend<s8, int64_t>(b); break;
    case VecOp::SxWD: r = extend<s16, s32>(b); break;
    case VecOp::SxWQ: r = extend<s16, int64_t>(b); break;
    case VecOp::SxDQ: r = extend<s32, int64_t>(b); break;
    case VecOp::DupLoQ: r.set<u64>(0, b.get<u64>(0)); r.set<u64>(1, b.get<u64>(0)); break;
    case VecOp::DupOddD:
      for (unsigned i = 0; i < 2; ++i) { r.set<u32>(2 * i, b.get<u32>(2 * i + 1)); r.set<u32>(2 * i + 1, b.get<u32>(2 * i + 1)); }
      break;
    case VecOp::DupEvenD:
      for (unsigned i = 0; i < 2; ++i) { r.set<u32>(2 * i, b.get<u32>(2 * i)); r.set<u32>(2 * i + 1, b.get<u32>(2 * i)); }
      break;
    case VecOp::BlendD:
      for (unsigned i = 0; i < 4; ++i) r.set<u32>(i, ((aux >> i) & 1) ? b.get<u32>(i) : a.get<u32>(i));
      break;
    case VecOp::BlendQ:
      for (unsigned i = 0; i < 2; ++i) r.set<u64>(i, ((aux >> i) & 1) ? b.get<u64>(i) : a.get<u64>(i));
      break;
    case VecOp::InsertPS: {  // imm: source lane [7:6], destination lane [5:4], zero mask [3:0]
      r = a;
      r.set<u32>((aux >> 4) & 3, b.get<u32>((aux >> 6) & 3));
      for (unsigned i = 0; i < 4; ++i)
        if ((aux >> i) & 1) r.set<u32>(i, 0);
      break;
    }
    case VecOp::MinPosUW: {
      unsigned best = 0;
      for (unsigned i = 1; i < 8; ++i)
        if (b.get<u16>(i) < b.get<u16>(best)) best = i;
      r.set<u16>(0, b.get<u16>(best));
      r.set<u16>(1, static_cast<u16>(best));
      break;
    }
    case VecOp::ShufPD:
      r.set<u64>(0, a.get<u64>(aux & 1));
      r.set<u64>(1, b.get<u64>((aux >> 1) & 1));
      break;
    case VecOp::MpsadBW: {  // imm[2]: destination block offset (0/4), imm[1:0]: source block (0..3) * 4
      const unsigned da = ((aux >> 2) & 1) * 4, sb = (aux & 3) * 4;
      for (unsigned i = 0; i < 8; ++i) {
        unsigned sum = 0;
        for (unsigned j = 0; j < 4; ++j) {
          const int d = int{a.get<u8>(da + i + j)} - int{b.get<u8>(sb + j)};
          sum += static_cast<unsigned>(d < 0 ? -d : d);
        }
        r.set<u16>(i, static_cast<u16>(sum));
      }
      break;
    }
    case VecOp::Count: break;
  }
  std::memcpy(out, r.b, 16);
}

}  // namespace kiln::emu::ir
