// The nbd protocol node over libnbd. libnbd handles are thread-safe but a
// synchronous call holds its handle until the reply arrives, so parallelism
// comes from several handles (only when the server says multi-conn is safe).
#include "nbd/nbd_client.h"

#include <libnbd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <cstring>
#include <vector>

#include "kiln/common/error.h"

namespace kiln::block {
namespace {

constexpr uint64_t kDefaultMaxRequest = 32u << 20;  // the spec's safe maximum payload
constexpr unsigned kMultiConnHandles = 4;

struct HandleCloser {
  void operator()(nbd_handle* handle) const { nbd_close(handle); }
};
using HandlePtr = std::unique_ptr<nbd_handle, HandleCloser>;

std::string percent_encode(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || std::strchr("-._~/", c)) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string percent_decode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

// The name qemu shows for an NBD node: nbd+unix://[/EXPORT]?socket=PATH or
// nbd://HOST:PORT[/EXPORT], whatever spelling the user chose.
std::string canonical_name(const std::string& uri, const std::string& fallback) {
  const auto scheme_end = uri.find("://");
  if (scheme_end == std::string::npos) return fallback;
  const std::string scheme = uri.substr(0, scheme_end);
  std::string_view rest = std::string_view(uri).substr(scheme_end + 3);
  std::string_view query;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  const auto slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  const std::string export_name = slash == std::string_view::npos ? "" : percent_decode(rest.substr(slash + 1));
  const std::string export_part = export_name.empty() ? "" : "/" + export_name;
  if (scheme.ends_with("+unix")) {
    std::string socket;
    while (!query.empty()) {
      const auto amp = query.find('&');
      const std::string_view param = query.substr(0, amp);
      if (param.starts_with("socket=")) socket = percent_decode(param.substr(7));
      query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    }
    return "nbd+unix://" + export_part + "?socket=" + socket;
  }
  std::string host(authority);
  if (host.empty()) host = "localhost";
  const bool has_port = host.front() == '[' ? host.find("]:") != std::string::npos : host.find(':') != std::string::npos;
  if (!has_port) host += ":10809";
  return "nbd://" + host + export_part;
}

// Error from the last libnbd failure on this thread.
Error nbd_failure(const std::string& filename, std::string_view what) {
  int err = nbd_get_errno();
  if (err == 0) err = EIO;
  const char* message = nbd_get_error();
  return Error(err, fmt::format("{} '{}': {}", what, filename, message ? message : errno_text(err)));
}

class NbdNode final : public Node {
 public:
  NbdNode(const std::string& filename, std::string uri, bool read_only)
      : filename_(canonical_name(uri, filename)), uri_(std::move(uri)) {
    handles_.push_back(connect());
    nbd_handle* first = handles_.front().get();
    int64_t size = nbd_get_size(first);
    if (size < 0) throw nbd_failure(filename_, "Could not open");
    size_ = static_cast<uint64_t>(size);
    const bool export_read_only = nbd_is_read_only(first) == 1;
    if (export_read_only && !read_only) {
      throw Error(EACCES, fmt::format("Could not open '{}': NBD export is read-only", filename_));
    }
    read_only_ = read_only;
    can_flush_ = nbd_can_flush(first) == 1;
    can_trim_ = nbd_can_trim(first) == 1;
    can_zero_ = nbd_can_zero(first) == 1;
    can_fast_zero_ = nbd_can_fast_zero(first) == 1;
    can_fua_ = nbd_can_fua(first) == 1;
    has_allocation_ = nbd_can_meta_context(first, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    int64_t maximum = nbd_get_block_size(first, LIBNBD_SIZE_MAXIMUM);
    max_request_ = maximum > 0 ? std::min<uint64_t>(maximum, kDefaultMaxRequest) : kDefaultMaxRequest;
    int64_t minimum = nbd_get_block_size(first, LIBNBD_SIZE_MINIMUM);
    alignment_ = minimum > 0 ? static_cast<uint32_t>(minimum) : 1;
    if (nbd_can_multi_conn(first) == 1) {
      for (unsigned i = 1; i < kMultiConnHandles; ++i) handles_.push_back(connect());
    }
  }

  ~NbdNode() override {
    for (auto& handle : handles_) nbd_shutdown(handle.get(), 0);
  }

  std::string_view driver_name() const override { return "nbd"; }
  const std::string& filename() const override { return filename_; }
  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  uint32_t request_alignment() const override { return alignment_; }

  void read(uint64_t offset, std::span<std::byte> buffer) override {
    nbd_handle* handle = pick();
    for (uint64_t done = 0; done < buffer.size();) {
      const uint64_t chunk = std::min<uint64_t>(max_request_, buffer.size() - done);
      if (nbd_pread(handle, buffer.data() + done, chunk, offset + done, 0) == -1) throw nbd_failure(filename_, "Could not read");
      done += chunk;
    }
  }

  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override {
    nbd_handle* handle = pick();
    const uint32_t command_flags = flags.fua && can_fua_ ? LIBNBD_CMD_FLAG_FUA : 0;
    for (uint64_t done = 0; done < data.size();) {
      const uint64_t chunk = std::min<uint64_t>(max_request_, data.size() - done);
      if (nbd_pwrite(handle, data.data() + done, chunk, offset + done, command_flags) == -1) {
        throw nbd_failure(filename_, "Could not write");
      }
      done += chunk;
    }
    if (flags.fua && !can_fua_) flush();
  }

  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override {
    if (!can_zero_ || (flags.no_fallback && !can_fast_zero_)) {
      Node::write_zeroes(offset, length, flags);
      return;
    }
    nbd_handle* handle = pick();
    uint32_t command_flags = flags.may_unmap ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
    if (flags.no_fallback) command_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    // Zero requests carry no payload; stay below 4 GiB per request anyway.
    constexpr uint64_t kMaxZero = 1u << 30;
    for (uint64_t done = 0; done < length;) {
      const uint64_t chunk = std::min(kMaxZero, length - done);
      if (nbd_zero(handle, chunk, offset + done, command_flags) == -1) throw nbd_failure(filename_, "Could not write zeroes to");
      done += chunk;
    }
  }

  void discard(uint64_t offset, uint64_t length) override {
    if (!can_trim_) return;
    nbd_handle* handle = pick();
    constexpr uint64_t kMaxTrim = 1u << 30;
    for (uint64_t done = 0; done < length;) {
      const uint64_t chunk = std::min(kMaxTrim, length - done);
      if (nbd_trim(handle, chunk, offset + done, 0) == -1) throw nbd_failure(filename_, "Could not discard");
      done += chunk;
    }
  }

  void flush() override {
    if (!can_flush_ || read_only_) return;
    // Every connection may hold unflushed writes of its own.
    for (auto& handle : handles_) {
      if (nbd_flush(handle.get(), 0) == -1) throw nbd_failure(filename_, "Could not flush");
    }
  }

  BlockStatus block_status(uint64_t offset, uint64_t length) override {
    // Offsets map one to one onto the export, as qemu's nbd driver reports.
    if (!has_allocation_) {
      return {.length = length, .flags = kStatusData | kStatusAllocated | kStatusOffsetValid, .host_offset = offset, .host_file = filename_};
    }
    struct Collected {
      uint64_t length = 0;
      uint32_t flags = 0;
      bool seen = false;
    } collected;
    nbd_extent_callback callback{
        .callback = [](void* user_data, const char* context, uint64_t, uint32_t* entries, size_t count, int*) -> int {
          auto* out = static_cast<Collected*>(user_data);
          if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || out->seen || count < 2) return 0;
          out->seen = true;
          out->length = entries[0];
          out->flags = entries[1];
          return 0;
        },
        .user_data = &collected,
        .free = nullptr,
    };
    const uint64_t query = std::min<uint64_t>(length, UINT32_MAX & ~uint64_t{0xfff});
    if (nbd_block_status(pick(), query, offset, callback, LIBNBD_CMD_FLAG_REQ_ONE) == -1) {
      throw nbd_failure(filename_, "Could not get block status of");
    }
    if (!collected.seen || collected.length == 0) {
      return {.length = length, .flags = kStatusData | kStatusAllocated | kStatusOffsetValid, .host_offset = offset, .host_file = filename_};
    }
    BlockStatus status{.length = std::min<uint64_t>(collected.length, length), .flags = kStatusOffsetValid, .host_offset = offset,
                       .host_file = filename_};
    const bool hole = collected.flags & LIBNBD_STATE_HOLE;
    const bool zero = collected.flags & LIBNBD_STATE_ZERO;
    // A hole that does not promise zeroes must still be read, so it counts as data.
    if (!hole || !zero) status.flags |= kStatusData;
    if (!hole) status.flags |= kStatusAllocated;
    if (zero) status.flags |= kStatusZero;
    return status;
  }

 private:
  HandlePtr connect() {
    HandlePtr handle(nbd_create());
    if (!handle) throw nbd_failure(filename_, "Could not open");
    nbd_set_uri_allow_local_file(handle.get(), true);
    nbd_add_meta_context(handle.get(), LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (nbd_connect_uri(handle.get(), uri_.c_str()) == -1) throw nbd_failure(filename_, "Could not open");
    return handle;
  }

  nbd_handle* pick() {
    if (handles_.size() == 1) return handles_.front().get();
    return handles_[next_.fetch_add(1, std::memory_order_relaxed) % handles_.size()].get();
  }

  std::string filename_;
  std::string uri_;
  std::vector<HandlePtr> handles_;
  std::atomic<unsigned> next_{0};
  uint64_t size_ = 0;
  uint64_t max_request_ = kDefaultMaxRequest;
  uint32_t alignment_ = 1;
  bool read_only_ = false;
  bool can_flush_ = false;
  bool can_trim_ = false;
  bool can_zero_ = false;
  bool can_fast_zero_ = false;
  bool can_fua_ = false;
  bool has_allocation_ = false;
};

}  // namespace

std::optional<std::string> nbd_uri_for(const std::string& filename) {
  for (const char* scheme : {"nbd://", "nbd+unix://", "nbds://", "nbds+unix://"}) {
    if (filename.starts_with(scheme)) return filename;
  }
  if (!filename.starts_with("nbd:")) return std::nullopt;
  // Legacy: nbd:HOST:PORT[:exportname=NAME] or nbd:unix:PATH[:exportname=NAME].
  std::string rest = filename.substr(4);
  std::string export_name;
  if (auto pos = rest.find(":exportname="); pos != std::string::npos) {
    export_name = rest.substr(pos + 12);
    rest.resize(pos);
  }
  if (rest.starts_with("unix:")) {
    return fmt::format("nbd+unix:///{}?socket={}", percent_encode(export_name), percent_encode(rest.substr(5)));
  }
  auto colon = rest.rfind(':');
  std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  std::string port = colon == std::string::npos ? "10809" : rest.substr(colon + 1);
  if (host.empty() || port.empty() || port.find_first_not_of("0123456789") != std::string::npos) {
    throw invalid_argument("Could not open '{}': malformed NBD address (expected nbd:HOST:PORT or nbd:unix:PATH)", filename);
  }
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return fmt::format("nbd://{}:{}/{}", host, port, percent_encode(export_name));
}

bool is_nbd_filename(const std::string& filename) {
  return filename.starts_with("nbd:") || filename.starts_with("nbd+unix://") || filename.starts_with("nbds://") ||
         filename.starts_with("nbds+unix://");
}

std::unique_ptr<Node> open_nbd(const std::string& filename, const ProtocolOptions& options) {
  auto uri = nbd_uri_for(filename);
  if (!uri) throw invalid_argument("Could not open '{}': not an NBD address", filename);
  return std::make_unique<NbdNode>(filename, *uri, options.read_only);
}

}  // namespace kiln::block
