#include <dirent.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <set>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

namespace kiln::ga {

std::optional<std::string> read_text_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  std::string text;
  std::array<char, 4096> chunk;
  for (;;) {
    ssize_t n = ::read(fd.get(), chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    text.append(chunk.data(), size_t(n));
  }
  return text;
}

std::string trim(std::string_view text) {
  while (!text.empty() && std::isspace((unsigned char)text.front())) text.remove_prefix(1);
  while (!text.empty() && std::isspace((unsigned char)text.back())) text.remove_suffix(1);
  return std::string(text);
}

std::vector<std::string> list_directory(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = ::opendir(path.c_str());
  if (!dir) return names;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    names.emplace_back(entry->d_name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

namespace {
constexpr char kBase64Chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    uint32_t v = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
    out += kBase64Chars[v >> 18];
    out += kBase64Chars[(v >> 12) & 63];
    out += kBase64Chars[(v >> 6) & 63];
    out += kBase64Chars[v & 63];
  }
  if (i < data.size()) {
    uint32_t v = uint8_t(data[i]) << 16;
    if (i + 1 < data.size()) v |= uint8_t(data[i + 1]) << 8;
    out += kBase64Chars[v >> 18];
    out += kBase64Chars[(v >> 12) & 63];
    out += i + 1 < data.size() ? kBase64Chars[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  static const std::array<int8_t, 256> table = [] {
    std::array<int8_t, 256> t;
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[uint8_t(kBase64Chars[i])] = int8_t(i);
    return t;
  }();
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t padding = 0;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == ' ' || c == '\t') continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    int8_t v = table[uint8_t(c)];
    if (v < 0 || padding) throw CommandError("Guest agent command failed, error was 'Invalid base64 data'");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  if (padding > 2 || bits >= 6) throw CommandError("Guest agent command failed, error was 'Invalid base64 data'");
  return out;
}

int run_helper(const SystemPaths& paths, const std::string& program, const std::vector<std::string>& args,
               std::string_view input) {
  std::vector<std::string> candidates;
  if (!paths.helper_dir.empty()) {
    candidates.push_back(paths.helper_dir + "/" + program);
  } else {
    for (const char* dir : {"/sbin", "/usr/sbin", "/bin", "/usr/bin"}) candidates.push_back(fmt::format("{}/{}", dir, program));
  }
  std::string found;
  for (const auto& candidate : candidates) {
    if (::access(candidate.c_str(), X_OK) == 0) {
      found = candidate;
      break;
    }
  }
  if (found.empty()) throw CommandError(fmt::format("failed to find helper program '{}'", program));

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) < 0) throw kiln::system_error(errno, "failed to create pipe for '{}'", program);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw kiln::system_error(errno, "failed to create child process for '{}'", program);
  if (pid == 0) {
    ::dup2(read_end.get(), 0);
    int null_fd = ::open("/dev/null", O_WRONLY);
    if (null_fd >= 0) {
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
    }
    ::execv(found.c_str(), argv.data());
    ::_exit(127);
  }
  read_end.reset();
  while (!input.empty()) {
    ssize_t n = ::write(write_end.get(), input.data(), input.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    input.remove_prefix(size_t(n));
  }
  write_end.reset();
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<MountEntry> real_mounts(const SystemPaths& paths) {
  std::vector<MountEntry> mounts;
  std::set<std::pair<unsigned, unsigned>> seen;
  auto text = read_text_file(paths.mountinfo);
  if (!text) throw CommandError(fmt::format("failed to open {}: {}", paths.mountinfo, kiln::errno_text(errno)));
  // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
  size_t pos = 0;
  while (pos < text->size()) {
    size_t end = text->find('\n', pos);
    if (end == std::string::npos) end = text->size();
    std::string_view line(text->data() + pos, end - pos);
    pos = end + 1;
    std::vector<std::string_view> fields;
    size_t start = 0;
    while (start < line.size()) {
      size_t space = line.find(' ', start);
      if (space == std::string_view::npos) space = line.size();
      if (space > start) fields.push_back(line.substr(start, space - start));
      start = space + 1;
    }
    auto dash = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 6 || dash == fields.end() || fields.end() - dash < 3) continue;
    MountEntry entry;
    if (std::sscanf(std::string(fields[2]).c_str(), "%u:%u", &entry.major, &entry.minor) != 2) continue;
    if (entry.major == 0) continue;  // virtual file systems (proc, tmpfs, ...)
    auto unescape = [](std::string_view s) {
      std::string out;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && std::isdigit((unsigned char)s[i + 1])) {
          out += char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
          i += 3;
        } else {
          out += s[i];
        }
      }
      return out;
    };
    entry.mountpoint = unescape(fields[4]);
    entry.fstype = std::string(dash[1]);
    entry.device = unescape(dash[2]);
    // Bind mounts repeat a device; freezing or trimming it once is enough.
    if (seen.insert({entry.major, entry.minor}).second) mounts.push_back(std::move(entry));
  }
  return mounts;
}

}  // namespace kiln::ga
