// Sizes on command lines and in output, spelled the way QEMU's tools spell them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kiln {

// Parses "512", "64k", "1.5G", "2T"... (suffixes b/B, k/K, M, G, T, P, E, powers
// of 1024; fractions allowed for suffixed values). `default_unit` multiplies a bare
// number. Returns nullopt for anything malformed, negative or above UINT64_MAX.
std::optional<uint64_t> parse_size(std::string_view text, uint64_t default_unit = 1);

// "1 GiB", "4 KiB", "1.5 MiB", "0 B": three significant digits, switching to the next
// unit at 1000, as qemu-img info prints sizes.
std::string format_size_iec(uint64_t bytes);

}  // namespace kiln
