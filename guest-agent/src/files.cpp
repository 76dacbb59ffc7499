#include "files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <limits>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"

namespace kiln::ga {

namespace {

struct ModeFlags {
  const char* mode;
  int flags;
};
// fopen() modes qemu-ga accepts, with and without 'b'.
constexpr std::array<ModeFlags, 15> kModes = {{
    {"r", O_RDONLY}, {"rb", O_RDONLY},
    {"w", O_WRONLY | O_CREAT | O_TRUNC}, {"wb", O_WRONLY | O_CREAT | O_TRUNC},
    {"a", O_WRONLY | O_CREAT | O_APPEND}, {"ab", O_WRONLY | O_CREAT | O_APPEND},
    {"r+", O_RDWR}, {"rb+", O_RDWR}, {"r+b", O_RDWR},
    {"w+", O_RDWR | O_CREAT | O_TRUNC}, {"wb+", O_RDWR | O_CREAT | O_TRUNC}, {"w+b", O_RDWR | O_CREAT | O_TRUNC},
    {"a+", O_RDWR | O_CREAT | O_APPEND}, {"ab+", O_RDWR | O_CREAT | O_APPEND}, {"a+b", O_RDWR | O_CREAT | O_APPEND},
}};

constexpr std::int64_t kMaxReadCount = 48 * 1024 * 1024;  // qemu-ga's QGA_READ_COUNT_MAX-like cap

}  // namespace

FileTable::FileTable(std::string state_dir) {
  if (state_dir.empty()) return;
  state_file_ = state_dir + "/qga.state";
  if (auto text = read_text_file(state_file_)) {
    // Key file: [global] fd_counter=N
    auto pos = text->find("fd_counter=");
    if (pos != std::string::npos) {
      long long value = std::atoll(text->c_str() + pos + 11);
      if (value >= 1000 && value < std::numeric_limits<std::int64_t>::max()) counter_ = value;
    }
  }
}

FileTable::~FileTable() { close_all(); }

void FileTable::close_all() {
  for (auto& [handle, file] : files_) std::fclose(file);
  files_.clear();
}

void FileTable::save_counter() {
  if (state_file_.empty()) return;
  std::string temp = state_file_ + ".tmp";
  std::FILE* out = std::fopen(temp.c_str(), "w");
  if (!out) return;
  fmt::print(out, "[global]\nfd_counter={}\n", counter_);
  bool ok = std::fclose(out) == 0;
  if (ok) ::rename(temp.c_str(), state_file_.c_str());
}

std::int64_t FileTable::next_handle() {
  std::int64_t handle = counter_++;
  save_counter();
  return handle;
}

std::int64_t FileTable::open(const std::string& path, const std::string& mode) {
  const ModeFlags* found = nullptr;
  for (const auto& candidate : kModes) {
    if (mode == candidate.mode) found = &candidate;
  }
  if (!found) throw CommandError(fmt::format("invalid file open mode '{}'", mode));
  int fd = ::open(path.c_str(), found->flags | O_CLOEXEC, 0666);
  if (fd < 0) {
    throw CommandError(fmt::format("failed to open file '{}' (mode: '{}'): {}", path, mode, kiln::errno_text(errno)));
  }
  std::FILE* file = ::fdopen(fd, mode.c_str());
  if (!file) {
    int err = errno;
    ::close(fd);
    throw CommandError(fmt::format("failed to open file '{}' (mode: '{}'): {}", path, mode, kiln::errno_text(err)));
  }
  std::int64_t handle = next_handle();
  files_[handle] = file;
  return handle;
}

std::FILE* FileTable::get(std::int64_t handle) {
  auto it = files_.find(handle);
  if (it == files_.end()) throw CommandError(fmt::format("handle '{}' has not been found", handle));
  return it->second;
}

void FileTable::close(std::int64_t handle) {
  std::FILE* file = get(handle);
  files_.erase(handle);
  if (std::fclose(file) != 0) throw CommandError(fmt::format("failed to close handle: {}", kiln::errno_text(errno)));
}

void register_file_commands(qmp::Dispatcher& dispatcher, FileTable& files) {
  dispatcher.add({"guest-file-open", {{"path", ParamType::Str}, {"mode", ParamType::Str, true}}, [&](const Json& args) {
                    return Json(files.open(args["path"].get<std::string>(),
                                           optional_arg<std::string>(args, "mode").value_or("r")));
                  }});
  dispatcher.add({"guest-file-close", {{"handle", ParamType::Int}}, [&](const Json& args) {
                    files.close(args["handle"].get<std::int64_t>());
                    return Json::object();
                  }});
  dispatcher.add({"guest-file-read", {{"handle", ParamType::Int}, {"count", ParamType::Int, true}},
                  [&](const Json& args) {
                    std::FILE* file = files.get(args["handle"].get<std::int64_t>());
                    std::int64_t count = optional_arg<std::int64_t>(args, "count").value_or(4096);
                    if (count < 0 || count > kMaxReadCount) {
                      throw CommandError(fmt::format("value '{}' is invalid for argument count", count));
                    }
                    std::string data(size_t(count), '\0');
                    size_t got = std::fread(data.data(), 1, data.size(), file);
                    if (std::ferror(file)) {
                      std::clearerr(file);
                      throw CommandError(fmt::format("failed to read file: {}", kiln::errno_text(errno)));
                    }
                    data.resize(got);
                    bool eof = std::feof(file) != 0;
                    std::clearerr(file);
                    return Json{{"count", got}, {"buf-b64", base64_encode(data)}, {"eof", eof}};
                  }});
  dispatcher.add({"guest-file-write",
                  {{"handle", ParamType::Int}, {"buf-b64", ParamType::Str}, {"count", ParamType::Int, true}},
                  [&](const Json& args) {
                    std::FILE* file = files.get(args["handle"].get<std::int64_t>());
                    std::string data = base64_decode(args["buf-b64"].get<std::string>());
                    std::int64_t count = optional_arg<std::int64_t>(args, "count").value_or(std::int64_t(data.size()));
                    if (count < 0 || std::uint64_t(count) > data.size()) {
                      throw CommandError("value '" + std::to_string(count) + "' is invalid for argument count");
                    }
                    size_t written = std::fwrite(data.data(), 1, size_t(count), file);
                    if (std::ferror(file)) {
                      std::clearerr(file);
                      throw CommandError(fmt::format("failed to write to file: {}", kiln::errno_text(errno)));
                    }
                    bool eof = std::feof(file) != 0;
                    std::clearerr(file);
                    return Json{{"count", written}, {"eof", eof}};
                  }});
  dispatcher.add({"guest-file-seek",
                  {{"handle", ParamType::Int}, {"offset", ParamType::Int}, {"whence", ParamType::Any}},
                  [&](const Json& args) {
                    std::FILE* file = files.get(args["handle"].get<std::int64_t>());
                    const Json& whence_arg = args["whence"];
                    int whence;
                    // GuestFileWhence: an int (QGA_SEEK_*: 0 set, 1 cur, 2 end) or a QGASeek name.
                    if (whence_arg.is_number_integer()) {
                      std::int64_t value = whence_arg.get<std::int64_t>();
                      if (value < 0 || value > 2) throw CommandError(fmt::format("invalid whence code {}", value));
                      whence = value == 0 ? SEEK_SET : value == 1 ? SEEK_CUR : SEEK_END;
                    } else if (whence_arg.is_string()) {
                      std::string name = whence_arg.get<std::string>();
                      if (name == "set") whence = SEEK_SET;
                      else if (name == "cur") whence = SEEK_CUR;
                      else if (name == "end") whence = SEEK_END;
                      else throw CommandError("Parameter 'whence' does not accept value '" + name + "'");
                    } else {
                      throw CommandError("Invalid parameter type for 'whence', expected: GuestFileWhence");
                    }
                    if (::fseeko(file, off_t(args["offset"].get<std::int64_t>()), whence) != 0) {
                      throw CommandError(fmt::format("failed to seek file: {}", kiln::errno_text(errno)));
                    }
                    off_t position = ::ftello(file);
                    bool eof = std::feof(file) != 0;
                    std::clearerr(file);
                    return Json{{"position", std::int64_t(position)}, {"eof", eof}};
                  }});
  dispatcher.add({"guest-file-flush", {{"handle", ParamType::Int}}, [&](const Json& args) {
                    std::FILE* file = files.get(args["handle"].get<std::int64_t>());
                    if (std::fflush(file) != 0) {
                      throw CommandError(fmt::format("failed to flush file: {}", kiln::errno_text(errno)));
                    }
                    return Json::object();
                  }});
}

}  // namespace kiln::ga
