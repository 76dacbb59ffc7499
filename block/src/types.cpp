#include "kiln/block/types.h"

namespace kiln::block {

std::optional<CacheMode> parse_cache_mode(std::string_view name) {
  if (name == "writeback") return CacheMode::Writeback;
  if (name == "none" || name == "off") return CacheMode::None;
  if (name == "unsafe") return CacheMode::Unsafe;
  if (name == "directsync") return CacheMode::Directsync;
  if (name == "writethrough") return CacheMode::Writethrough;
  return std::nullopt;
}

std::string_view to_string(CacheMode mode) {
  switch (mode) {
    case CacheMode::Writeback: return "writeback";
    case CacheMode::None: return "none";
    case CacheMode::Unsafe: return "unsafe";
    case CacheMode::Directsync: return "directsync";
    case CacheMode::Writethrough: return "writethrough";
  }
  return "writeback";
}

std::optional<Preallocation> parse_preallocation(std::string_view name) {
  if (name == "off") return Preallocation::Off;
  if (name == "metadata") return Preallocation::Metadata;
  if (name == "falloc") return Preallocation::Falloc;
  if (name == "full") return Preallocation::Full;
  return std::nullopt;
}

std::string_view to_string(Preallocation mode) {
  switch (mode) {
    case Preallocation::Off: return "off";
    case Preallocation::Metadata: return "metadata";
    case Preallocation::Falloc: return "falloc";
    case Preallocation::Full: return "full";
  }
  return "off";
}

}  // namespace kiln::block
