// Kiln's one logger. Messages go to stderr (or a file chosen by the program),
// one line each, filtered by level. KILN_LOG=debug|info|warn|error sets the level.
#pragma once

#include <cstdio>
#include <string_view>

#include <fmt/format.h>

namespace kiln::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

void set_level(Level level);
Level level();
// Redirect log output (stderr by default). The stream is not owned.
void set_stream(std::FILE* stream);
void write(Level level, std::string_view message);

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  if (level() <= Level::Debug) write(Level::Debug, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  if (level() <= Level::Info) write(Level::Info, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
  if (level() <= Level::Warn) write(Level::Warn, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
  if (level() <= Level::Error) write(Level::Error, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kiln::log
