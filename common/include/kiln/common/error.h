// Kiln's one error-handling style: functions throw kiln::Error on failure.
// An Error carries an errno-like cause (0 when none applies) and a complete
// human message, already naming the file or object involved, so that a tool
// can print it on one line as "kiln-img: <message>".
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kiln {

class Error : public std::runtime_error {
 public:
  Error(int errno_value, std::string message)
      : std::runtime_error(std::move(message)), errno_value_(errno_value) {}

  // errno value describing the cause (e.g. ENOENT), or 0.
  int errno_value() const noexcept { return errno_value_; }

 private:
  int errno_value_;
};

// strerror() text for an errno value, thread-safe.
std::string errno_text(int errno_value);

// Error whose message is the formatted text followed by ": <strerror(err)>".
template <typename... Args>
Error system_error(int err, fmt::format_string<Args...> format, Args&&... args) {
  return Error(err, fmt::format(format, std::forward<Args>(args)...) + ": " + errno_text(err));
}

// Error without an errno cause beyond the given one (EINVAL by default).
template <typename... Args>
Error invalid_argument(fmt::format_string<Args...> format, Args&&... args) {
  return Error(EINVAL, fmt::format(format, std::forward<Args>(args)...));
}

// Prefixes an error's message with context ("Could not open 'x': ") keeping its cause.
Error with_context(const Error& error, std::string_view context);

}  // namespace kiln
