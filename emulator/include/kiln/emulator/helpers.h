// Helper functions called from IR (CallHelper) for instructions too complex
// or too rare to express as IR ops. A helper may read and write any CPU state
// and raises guest exceptions by filling CpuState::exception.
#pragma once

#include <cstdint>
#include <string_view>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/ir.h"

namespace kiln::emu {

#define KILN_HELPERS(X)                                                                      \
  X(DivU8, Void) X(DivU16, Void) X(DivU32, Void) X(DivU64, Void)                             \
  X(DivS8, Void) X(DivS16, Void) X(DivS32, Void) X(DivS64, Void)                             \
  X(Rcl, I64) X(Rcr, I64)                                                                    \
  X(Daa, Void) X(Das, Void) X(Aaa, Void) X(Aas, Void) X(Aam, Void) X(Aad, Void)              \
  X(Cpuid, Void) X(Rdtsc, Void) X(Halt, Void) X(Syscall, Void)                              \
  X(Pdep, I64) X(Pext, I64) X(Crc32, I64)

enum class HelperId : uint32_t {
#define KILN_HELPER_ENUM(name, type) name,
  KILN_HELPERS(KILN_HELPER_ENUM)
#undef KILN_HELPER_ENUM
  Count
};

using HelperFn = uint64_t (*)(CpuState& cpu, uint64_t a, uint64_t b, uint64_t c, uint64_t d);

struct HelperInfo {
  std::string_view name;
  ir::Type result;
  HelperFn fn;
};
const HelperInfo& helper_info(HelperId id);

}  // namespace kiln::emu
