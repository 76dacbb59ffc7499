#include "commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <sstream>
#include <vector>

#include "kiln/common/error.h"
#include "kiln/common/size.h"

namespace kiln::ivshmem {
namespace {

std::vector<std::string> split_words(const std::string& line) {
  std::istringstream stream(line);
  std::vector<std::string> words;
  for (std::string word; stream >> word;) words.push_back(word);
  return words;
}

// The rest of `line` after its first `count` words, inner spaces kept.
std::string text_after_words(const std::string& line, size_t count) {
  size_t position = 0;
  for (size_t word = 0; word < count; ++word) {
    position = line.find_first_not_of(" \t", position);
    position = line.find_first_of(" \t", position);
  }
  position = line.find_first_not_of(" \t", position);
  return position == std::string::npos ? std::string() : line.substr(position);
}

uint64_t parse_number(const std::string& text, const char* what, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), &end, 0);
  if (errno != 0 || end == text.c_str() || *end != '\0' || text[0] == '-' || value > max) {
    throw invalid_argument("invalid {} '{}'", what, text);
  }
  return value;
}

// Offsets and lengths accept size suffixes ("4k").
uint64_t parse_offset(const std::string& text, const char* what) {
  auto value = parse_size(text);
  if (!value) throw invalid_argument("invalid {} '{}'", what, text);
  return *value;
}

std::chrono::milliseconds parse_timeout(const std::string& text) {
  char* end = nullptr;
  double seconds = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !(seconds >= 0) || seconds > 86400 * 365) {
    throw invalid_argument("invalid timeout '{}' (seconds)", text);
  }
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

void print_hex(std::span<const std::byte> bytes, uint64_t base) {
  std::string out;
  out.reserve(bytes.size() / 16 * 80 + 80);
  for (size_t line = 0; line < bytes.size(); line += 16) {
    fmt::format_to(std::back_inserter(out), "{:08x}:", base + line);
    size_t end = std::min(bytes.size(), line + 16);
    for (size_t i = line; i < end; ++i) fmt::format_to(std::back_inserter(out), " {:02x}", bytes[i]);
    out += '\n';
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void CommandRunner::print_help() {
  fmt::print(
      "available commands:\n"
      "-----------------------\n"
      "help: show this help\n"
      "dump: dump peers (including us)\n"
      "int <peer> <vector>: notify one vector on a peer\n"
      "int <peer> all: notify all vectors of a peer\n"
      "int all: notify all vectors of all peers (excepting us)\n"
      "id: print our peer ID\n"
      "peers: print the IDs of the other peers\n"
      "wait-peers <count> [timeout]: wait until exactly <count> other peers are connected\n"
      "wait-int [vector|any] [timeout]: wait for interrupts, print and consume them\n"
      "wait-text <offset> <text>: wait until shared memory holds <text> at <offset>\n"
      "read <offset> <length>: hex dump of shared memory\n"
      "write <offset> <text>: copy text into shared memory\n"
      "fill <offset> <length> <byte>: fill shared memory with a byte\n"
      "save <offset> <length> <file>: copy shared memory into a file\n"
      "load <offset> <file>: copy a file into shared memory\n"
      "echo <text>: print text (marks a point in the output for scripts)\n"
      "quit: leave\n"
      "(timeouts in seconds; offsets and lengths accept K, M, G suffixes)\n");
}

void CommandRunner::run(const std::string& line) {
  const std::vector<std::string> words = split_words(line);
  if (words.empty()) return;
  const std::string& command = words[0];
  const size_t arguments = words.size() - 1;
  auto require = [&](size_t min, size_t max, const char* usage) {
    if (arguments < min || arguments > max) throw invalid_argument("usage: {}", usage);
  };
  auto memory_range = [&](uint64_t offset, uint64_t length) {
    std::span<std::byte> memory = session_.memory();
    if (offset > memory.size() || length > memory.size() - offset) {
      throw Error(ERANGE, fmt::format("range {}+{} is outside the {} bytes of shared memory", offset, length,
                                      memory.size()));
    }
    return memory.subspan(offset, length);
  };

  if (command == "help") {
    print_help();
  } else if (command == "dump") {
    require(0, 0, "dump");
    fmt::print("own id: {}\n", session_.id());
    fmt::print("shared memory size: {}\n", session_.memory().size());
    fmt::print("own vectors: {}\n", session_.own_vector_count());
    for (const auto& [id, peer] : session_.peers()) fmt::print("peer {}: {} vectors\n", id, peer.vectors.size());
  } else if (command == "id") {
    require(0, 0, "id");
    fmt::print("{}\n", session_.id());
  } else if (command == "peers") {
    require(0, 0, "peers");
    std::string ids;
    for (const auto& entry : session_.peers()) ids += fmt::format("{}{}", ids.empty() ? "" : " ", entry.first);
    fmt::print("{}\n", ids);
  } else if (command == "int") {
    require(1, 2, "int <peer> <vector> | int <peer> all | int all");
    if (words[1] == "all") {
      if (arguments != 1) throw invalid_argument("usage: int all");
      session_.notify_all();
      return;
    }
    if (arguments != 2) throw invalid_argument("usage: int <peer> <vector> | int <peer> all");
    auto peer = static_cast<PeerId>(parse_number(words[1], "peer ID", kMaxPeerId));
    if (words[2] == "all") {
      session_.notify_peer(peer);
    } else {
      session_.notify(peer, static_cast<unsigned>(parse_number(words[2], "vector", kMaxVectors)));
    }
  } else if (command == "wait-peers") {
    require(1, 2, "wait-peers <count> [timeout]");
    uint64_t count = parse_number(words[1], "peer count", kMaxPeers);
    auto timeout = arguments == 2 ? parse_timeout(words[2]) : default_timeout_;
    if (!session_.wait_until([&] { return session_.peers().size() == count; }, timeout)) {
      throw Error(ETIMEDOUT, fmt::format("timed out waiting for {} peers ({} connected)", count,
                                         session_.peers().size()));
    }
  } else if (command == "wait-int") {
    require(0, 2, "wait-int [vector|any] [timeout]");
    std::optional<unsigned> vector;
    if (arguments >= 1 && words[1] != "any") vector = static_cast<unsigned>(parse_number(words[1], "vector", kMaxVectors));
    auto timeout = arguments == 2 ? parse_timeout(words[2]) : default_timeout_;
    auto has_pending = [&] {
      const auto& pending = session_.pending_interrupts();
      if (vector) return *vector < pending.size() && pending[*vector] != 0;
      for (uint64_t count : pending) {
        if (count != 0) return true;
      }
      return false;
    };
    if (!session_.wait_until(has_pending, timeout)) {
      throw Error(ETIMEDOUT, vector ? fmt::format("timed out waiting for an interrupt on vector {}", *vector)
                                    : std::string("timed out waiting for an interrupt"));
    }
    for (auto [index, count] : session_.take_interrupts(vector)) fmt::print("vector {} count {}\n", index, count);
  } else if (command == "wait-text") {
    if (arguments < 2) throw invalid_argument("usage: wait-text <offset> <text>");
    uint64_t offset = parse_offset(words[1], "offset");
    std::string text = text_after_words(line, 2);
    auto watched = memory_range(offset, text.size());
    // Memory has no change notification: poll, serving events in between.
    auto matches = [&] { return std::memcmp(watched.data(), text.data(), text.size()) == 0; };
    auto deadline = std::chrono::steady_clock::now() + default_timeout_;
    while (!matches()) {
      if (std::chrono::steady_clock::now() >= deadline) {
        throw Error(ETIMEDOUT, fmt::format("timed out waiting for '{}' at offset {}", text, offset));
      }
      session_.wait_until([] { return false; }, std::chrono::milliseconds(10));
    }
  } else if (command == "read") {
    require(2, 2, "read <offset> <length>");
    uint64_t offset = parse_offset(words[1], "offset");
    print_hex(memory_range(offset, parse_offset(words[2], "length")), offset);
  } else if (command == "write") {
    // The text is the rest of the line after the offset, spaces included.
    if (arguments < 2) throw invalid_argument("usage: write <offset> <text>");
    uint64_t offset = parse_offset(words[1], "offset");
    std::string text = text_after_words(line, 2);
    auto target = memory_range(offset, text.size());
    std::memcpy(target.data(), text.data(), text.size());
  } else if (command == "fill") {
    require(3, 3, "fill <offset> <length> <byte>");
    auto target = memory_range(parse_offset(words[1], "offset"), parse_offset(words[2], "length"));
    std::memset(target.data(), static_cast<int>(parse_number(words[3], "byte", 255)), target.size());
  } else if (command == "save") {
    require(3, 3, "save <offset> <length> <file>");
    auto source = memory_range(parse_offset(words[1], "offset"), parse_offset(words[2], "length"));
    UniqueFd file(::open(words[3].c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!file.valid()) throw system_error(errno, "cannot create '{}'", words[3]);
    for (size_t done = 0; done < source.size();) {
      ssize_t written = ::write(file.get(), source.data() + done, source.size() - done);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) throw system_error(errno, "cannot write '{}'", words[3]);
      done += static_cast<size_t>(written);
    }
  } else if (command == "load") {
    require(2, 2, "load <offset> <file>");
    uint64_t offset = parse_offset(words[1], "offset");
    UniqueFd file(::open(words[2].c_str(), O_RDONLY | O_CLOEXEC));
    if (!file.valid()) throw system_error(errno, "cannot open '{}'", words[2]);
    auto target = memory_range(offset, session_.memory().size() - std::min<uint64_t>(offset, session_.memory().size()));
    size_t done = 0;
    for (;;) {
      if (done == target.size()) {
        char extra;
        if (::read(file.get(), &extra, 1) > 0) throw Error(EFBIG, fmt::format("'{}' does not fit in shared memory at offset {}", words[2], offset));
        break;
      }
      ssize_t got = ::read(file.get(), target.data() + done, target.size() - done);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw system_error(errno, "cannot read '{}'", words[2]);
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
  } else if (command == "echo") {
    fmt::print("{}\n", text_after_words(line, 1));
  } else if (command == "quit" || command == "exit") {
    quit_ = true;
  } else {
    throw invalid_argument("unknown command '{}' (try 'help')", command);
  }
  std::fflush(stdout);
}

}  // namespace kiln::ivshmem
