// qemu-io's output conventions: byte counts ("1.500 KiB"), elapsed times,
// the two-line statistics report, hex dumps and number parsing with the
// exact messages scripts written for qemu-io expect.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace kiln::io {

// qemu-io's largest single request (INT_MAX rounded down to 512).
inline constexpr uint64_t kMaxRequestBytes = 2147483136;

// "512 bytes", "4 KiB", "1.500 KiB": three decimals, ".000" dropped.
std::string format_bytes(double value);

// "00.00 sec" (short form) or "0:00:00.00" (fixed form, and whenever a
// second or more has passed).
std::string format_elapsed(std::chrono::nanoseconds elapsed, bool fixed);

// The "read 4096/4096 bytes at offset 0" line and the throughput line, or
// the one -C line. Returned as one string so it can be printed atomically.
std::string format_report(std::string_view operation, std::chrono::nanoseconds elapsed, uint64_t offset, uint64_t count,
                          uint64_t total, int ops, bool machine_readable);

// Hex dump lines "00000010:  ab ab ...  ascii".
std::string format_dump(std::span<const std::byte> data, uint64_t offset);

// Parses a number the way qemu-io's commands do (decimal or 0x hex,
// optional K/M/G/T/P/E suffix, fractions with a suffix). Returns the value,
// or a negative errno (-EINVAL malformed, -ERANGE too large).
int64_t parse_number(std::string_view text);
// Prints qemu-io's message for a parse_number failure.
void print_number_error(int64_t error, std::string_view text);

// Parses a pattern byte (strtol base 0, 0..255); prints the error itself.
int parse_pattern(const char* text);

// Thread-safe whole-string writes (aio completions print from workers).
void out(std::string_view text);
void err(std::string_view text);

}  // namespace kiln::io
