#include "session.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>

#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"

namespace kiln::nbd {
namespace {

constexpr uint32_t kMaxOptionLength = 64 * 1024;  // longer options are skipped, not buffered
constexpr size_t kDiscardChunk = 64 * 1024;
constexpr size_t kMaxIdleBuffers = 256;           // BufferPool entries, so a lookup stays short
constexpr size_t kMaxStatusDescriptors = 64 * 1024;
constexpr uint32_t kContextAllocation = 1;
constexpr uint32_t kContextDepth = 2;
constexpr const char* kAllocationName = "base:allocation";
constexpr const char* kDepthName = "qemu:allocation-depth";
constexpr uint32_t kContextFirstBitmap = 3;
constexpr std::string_view kBitmapPrefix = "qemu:dirty-bitmap:";
constexpr uint32_t kStateDirty = 1;
constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kMaxReadNow = 4 << 20;  // larger cached reads still go to a worker
#ifdef SYS_cachestat
constexpr long kCachestatSyscall = SYS_cachestat;
#else
constexpr long kCachestatSyscall = 451;  // the same number on every architecture but alpha
#endif

std::span<const std::byte> bytes(std::string_view text) { return std::as_bytes(std::span(text.data(), text.size())); }

// Status through the backing chain, as Image::chain_status computes it, for a
// node that may not be owned by an Image (the -s overlay).
struct ExtentStatus {
  uint64_t length;
  bool data;
  bool zero;
  uint32_t depth;  // qemu:allocation-depth value: 0 unallocated, 1 top, 2 backing...
};

ExtentStatus chain_status(block::Node& top, uint64_t offset, uint64_t length) {
  block::Node* node = &top;
  uint32_t depth = 1;
  while (true) {
    if (offset >= node->size()) return {length, false, true, 0};
    block::BlockStatus status = node->block_status(offset, std::min(length, node->size() - offset));
    length = std::clamp<uint64_t>(status.length, 1, length);
    block::Node* backing = node->backing_child();
    if ((status.flags & block::kStatusAllocated) || backing == nullptr) {
      const bool allocated = status.flags & block::kStatusAllocated;
      if (!allocated && backing == nullptr) return {length, false, true, 0};
      return {length, (status.flags & block::kStatusData) != 0, (status.flags & block::kStatusZero) != 0, depth};
    }
    node = backing;
    ++depth;
  }
}

// Whether every page of the range is in the page cache (cachestat(2), Linux
// 6.5); false when unknown.
bool in_page_cache(const block::HostExtent& file) {
  struct Range {
    uint64_t offset, length;
  };
  struct Stat {
    uint64_t cached, dirty, writeback, evicted, recently_evicted;
  };
  static std::atomic<bool> unsupported{false};
  if (unsupported.load(std::memory_order_relaxed)) return false;
  Range range{file.offset, file.length};
  Stat stat{};
  if (::syscall(kCachestatSyscall, file.fd, &range, &stat, 0) == -1) {
    if (errno == ENOSYS) unsupported.store(true, std::memory_order_relaxed);
    return false;
  }
  const uint64_t pages = (file.offset + file.length + kPageSize - 1) / kPageSize - file.offset / kPageSize;
  return stat.cached >= pages;
}

}  // namespace

uint32_t nbd_error_from_errno(int err) {
  switch (err) {
    case EPERM:
    case EACCES:
    case EROFS:
      return kErrPerm;
    case ENOMEM:
      return kErrNoMem;
    case EINVAL:
      return kErrInval;
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return kErrNoSpc;
    case EOVERFLOW:
      return kErrOverflow;
    case ENOTSUP:
      return kErrNotSup;
    case ESHUTDOWN:
      return kErrShutdown;
    default:
      return kErrIo;
  }
}

struct Session::Request final : Task {
  explicit Request(Session& owner) : session(owner) {}
  void run() override { session.execute(*this); }

  Session& session;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint64_t length = 0;  // payload or effect length (64-bit with extended headers)
  uint64_t reserved_bytes = 0;
  uint32_t error = 0;                 // decided while parsing; replied without executing
  std::vector<std::byte> buffer;      // READ/WRITE data, from the BufferPool while in flight
  std::vector<ExtentStatus> extents;  // reused by READ and BLOCK_STATUS
  std::vector<std::byte> status_payload;
  // READ replies (reused, so a connection allocates them once).
  std::vector<block::HostExtent> files;
  std::vector<std::byte> headers;
  std::vector<ReplyPart> parts;
  std::vector<std::span<const std::byte>> spans;
  // How far the READ is planned: a worker taking over from read_now() goes on
  // from there instead of asking the block layer again.
  enum class ReadPlan : uint8_t { None, Extents, InFiles, NotInFiles } read_plan = ReadPlan::None;
};

std::vector<std::byte> BufferPool::take(size_t size) {
  {
    std::lock_guard lock(mutex_);
    // The smallest idle buffer that fits.
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->size() >= size && (best == idle_.end() || it->size() < best->size())) best = it;
    }
    if (best != idle_.end()) {
      std::vector<std::byte> buffer = std::move(*best);
      *best = std::move(idle_.back());
      idle_.pop_back();
      idle_bytes_ -= buffer.size();
      return buffer;
    }
  }
  return std::vector<std::byte>(size);
}

void BufferPool::give(std::vector<std::byte> buffer) {
  if (buffer.empty()) return;
  std::lock_guard lock(mutex_);
  if (idle_.size() >= kMaxIdleBuffers || idle_bytes_ + buffer.size() > max_idle_bytes_) return;  // freed
  idle_bytes_ += buffer.size();
  idle_.push_back(std::move(buffer));
}

size_t BufferPool::idle_bytes() const {
  std::lock_guard lock(mutex_);
  return idle_bytes_;
}

Session::Session(const ExportConfig& config, const SessionLimits& limits, Output& output, Executor& executor, bool tls_available,
                 bool tls_required)
    : config_(config), limits_(limits), output_(output), executor_(executor), tls_available_(tls_available),
      tls_required_(tls_required), own_buffers_(limits.buffers == nullptr ? std::make_unique<BufferPool>() : nullptr),
      buffers_(limits.buffers != nullptr ? limits.buffers : own_buffers_.get()) {}

Session::~Session() { drain(); }

void Session::start() {
  std::array<std::byte, 18> greeting{};
  std::byte* p = store64(greeting.data(), kNbdMagic);
  p = store64(p, kOptionMagic);
  store16(p, kFlagFixedNewstyle | kFlagNoZeroes);
  const std::span<const std::byte> parts[] = {greeting};
  output_.send(parts);
  phase_ = Phase::ClientFlags;
  input_buffer_.assign(4, std::byte{0});
  input_filled_ = 0;
}

void Session::finish(std::string reason) {
  finished_ = true;
  phase_ = Phase::Done;
  if (end_reason_.empty()) end_reason_ = std::move(reason);
}

std::span<std::byte> Session::input() {
  switch (phase_) {
    case Phase::Done:
      return {};
    case Phase::RequestPayload:
      return std::span(current_->buffer).subspan(input_filled_, current_->length - input_filled_);
    default:
      return std::span(input_buffer_).subspan(input_filled_);
  }
}

void Session::consumed(size_t count) {
  if (phase_ == Phase::Done || count == 0) return;
  if (phase_ == Phase::OptionDiscard || phase_ == Phase::PayloadDiscard) {
    discard_remaining_ -= std::min<uint64_t>(count, discard_remaining_);
    if (discard_remaining_ > 0) {
      input_buffer_.resize(std::min<uint64_t>(discard_remaining_, kDiscardChunk));
      input_filled_ = 0;
      return;
    }
    if (phase_ == Phase::OptionDiscard) {
      option_error(option_, kRepErrTooBig, "option too long");
      phase_ = Phase::OptionHeader;
      input_buffer_.assign(kOptionHeaderSize, std::byte{0});
    } else {
      phase_ = Phase::Transmission;
      input_buffer_.assign(request_header_size(), std::byte{0});
      Request& request = *std::exchange(current_, nullptr);
      dispatch(request);
    }
    input_filled_ = 0;
    return;
  }
  input_filled_ += count;
  if (!input().empty()) return;
  input_filled_ = 0;
  switch (phase_) {
    case Phase::ClientFlags:
      on_client_flags();
      break;
    case Phase::OptionHeader:
      on_option_header();
      break;
    case Phase::OptionData:
      on_option();
      break;
    case Phase::Transmission:
      on_request_header();
      break;
    case Phase::RequestPayload: {
      phase_ = Phase::Transmission;
      Request& request = *std::exchange(current_, nullptr);
      dispatch(request);
      break;
    }
    default:
      break;
  }
}

void Session::tls_started() {
  tls_pending_ = false;
  tls_active_ = true;
}

// ---- Handshake -------------------------------------------------------------

void Session::on_client_flags() {
  const uint32_t flags = load32(input_buffer_.data());
  if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
    finish(fmt::format("client sent unknown flags {:#x}", flags));
    return;
  }
  fixed_newstyle_ = flags & kClientFixedNewstyle;
  no_zeroes_ = flags & kClientNoZeroes;
  phase_ = Phase::OptionHeader;
  input_buffer_.assign(kOptionHeaderSize, std::byte{0});
}

void Session::on_option_header() {
  if (load64(input_buffer_.data()) != kOptionMagic) {
    finish("bad option magic");
    return;
  }
  option_ = load32(input_buffer_.data() + 8);
  const uint32_t length = load32(input_buffer_.data() + 12);
  if (length > kMaxOptionLength) {
    phase_ = Phase::OptionDiscard;
    discard_remaining_ = length;
    input_buffer_.resize(kDiscardChunk);
    return;
  }
  input_buffer_.resize(length);
  if (length == 0) {
    on_option();
  } else {
    phase_ = Phase::OptionData;
  }
}

void Session::option_reply(uint32_t option, uint32_t type, std::span<const std::byte> data) {
  std::array<std::byte, 20> header{};
  std::byte* p = store64(header.data(), kOptionReplyMagic);
  p = store32(p, option);
  p = store32(p, type);
  store32(p, static_cast<uint32_t>(data.size()));
  const std::span<const std::byte> parts[] = {header, data};
  output_.send(parts);
}

void Session::option_error(uint32_t option, uint32_t type, std::string_view message) {
  log::debug("nbd: option {} refused: {}", option, message);
  option_reply(option, type, bytes(message));
}

void Session::on_option() {
  const uint32_t option = option_;
  phase_ = Phase::OptionHeader;
  const bool has_data = !input_buffer_.empty();
  auto done = [&] {
    if (phase_ == Phase::OptionHeader) input_buffer_.assign(kOptionHeaderSize, std::byte{0});
  };
  if (tls_required_ && !tls_active_ && option != kOptStartTls && option != kOptAbort) {
    if (option == kOptExportName) {
      finish("client tried NBD_OPT_EXPORT_NAME without TLS");
      return;
    }
    option_error(option, kRepErrTlsReqd, "TLS is required");
    done();
    return;
  }
  switch (option) {
    case kOptExportName:
      handle_export_name();
      break;
    case kOptAbort:
      option_reply(option, kRepAck);
      finish("");
      break;
    case kOptList: {
      if (has_data) {
        option_error(option, kRepErrInvalid, "NBD_OPT_LIST takes no data");
        break;
      }
      std::vector<std::byte> data(4 + config_.name.size() + config_.description.size());
      std::byte* p = store32(data.data(), static_cast<uint32_t>(config_.name.size()));
      std::memcpy(p, config_.name.data(), config_.name.size());
      std::memcpy(p + config_.name.size(), config_.description.data(), config_.description.size());
      option_reply(option, kRepServer, data);
      option_reply(option, kRepAck);
      break;
    }
    case kOptStartTls:
      if (has_data) {
        option_error(option, kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
      } else if (!tls_available_) {
        option_error(option, kRepErrPolicy, "TLS not configured");
      } else if (tls_active_) {
        option_error(option, kRepErrInvalid, "TLS already active");
      } else {
        option_reply(option, kRepAck);
        // Whatever was negotiated in plaintext is forgotten.
        structured_ = false;
        extended_ = false;
        forget_meta_contexts();
        tls_pending_ = true;
      }
      break;
    case kOptInfo:
    case kOptGo:
      handle_info_go(option == kOptGo);
      break;
    case kOptStructuredReply:
      if (has_data) {
        option_error(option, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
      } else if (extended_) {
        // Extended headers take precedence; there is no downgrade.
        option_error(option, kRepErrExtHeaderReqd, "extended headers already negotiated");
      } else {
        structured_ = true;
        option_reply(option, kRepAck);
      }
      break;
    case kOptExtendedHeaders:
      if (has_data) {
        option_error(option, kRepErrInvalid, "NBD_OPT_EXTENDED_HEADERS takes no data");
      } else if (extended_) {
        option_error(option, kRepErrInvalid, "extended headers already negotiated");
      } else {
        extended_ = true;
        option_reply(option, kRepAck);
      }
      break;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      handle_meta_context(option == kOptSetMetaContext);
      break;
    default:
      option_error(option, kRepErrUnsup, fmt::format("option {} not supported", option));
      break;
  }
  done();
}

void Session::handle_export_name() {
  if (extended_) {
    // Forbidden by the spec, and this option has no way to report an error.
    finish("client used NBD_OPT_EXPORT_NAME after negotiating extended headers");
    return;
  }
  const std::string name(reinterpret_cast<const char*>(input_buffer_.data()), input_buffer_.size());
  if (name != config_.name) {
    finish(fmt::format("export '{}' not present", name));
    return;
  }
  std::array<std::byte, 10 + 124> reply{};
  std::byte* p = store64(reply.data(), config_.node->size());
  store16(p, transmission_flags());
  const std::span<const std::byte> parts[] = {std::span<const std::byte>(reply).first(no_zeroes_ ? 10 : reply.size())};
  output_.send(parts);
  forget_meta_contexts();  // contexts need NBD_OPT_GO
  enter_transmission();
}

void Session::handle_info_go(bool go) {
  const std::span<const std::byte> data = input_buffer_;
  const uint32_t option = option_;
  if (data.size() < 6) {
    option_error(option, kRepErrInvalid, "option too short");
    return;
  }
  const uint32_t name_length = load32(data.data());
  if (name_length > data.size() - 6) {
    option_error(option, kRepErrInvalid, "export name longer than the option");
    return;
  }
  const std::string name(reinterpret_cast<const char*>(data.data() + 4), name_length);
  const uint16_t request_count = load16(data.data() + 4 + name_length);
  if (6 + name_length + 2ull * request_count != data.size()) {
    option_error(option, kRepErrInvalid, "information request count does not match the option length");
    return;
  }
  if (name != config_.name) {
    option_error(option, kRepErrUnknown, fmt::format("export '{}' not present", name));
    return;
  }
  bool want_name = false;
  bool want_description = false;
  for (uint16_t i = 0; i < request_count; ++i) {
    const uint16_t info = load16(data.data() + 6 + name_length + 2 * i);
    want_name |= info == kInfoName;
    want_description |= info == kInfoDescription;
  }
  if (want_name) {
    std::vector<std::byte> reply(2 + name.size());
    std::memcpy(store16(reply.data(), kInfoName), name.data(), name.size());
    option_reply(option, kRepInfo, reply);
  }
  if (want_description && !config_.description.empty()) {
    std::vector<std::byte> reply(2 + config_.description.size());
    std::memcpy(store16(reply.data(), kInfoDescription), config_.description.data(), config_.description.size());
    option_reply(option, kRepInfo, reply);
  }
  {
    const uint32_t minimum = std::max<uint32_t>(1, config_.node->request_alignment());
    const uint32_t preferred = std::min<uint32_t>(kMaxPayload, std::max<uint32_t>({4096, minimum, config_.node->cluster_size()}));
    std::array<std::byte, 14> reply{};
    std::byte* p = store16(reply.data(), kInfoBlockSize);
    p = store32(p, minimum);
    p = store32(p, preferred);
    store32(p, kMaxPayload);
    option_reply(option, kRepInfo, reply);
  }
  std::array<std::byte, 12> reply{};
  std::byte* p = store16(reply.data(), kInfoExport);
  p = store64(p, config_.node->size());
  store16(p, transmission_flags());
  option_reply(option, kRepInfo, reply);
  option_reply(option, kRepAck);
  if (go) {
    if (meta_export_ != name) forget_meta_contexts();
    enter_transmission();
  }
}

void Session::forget_meta_contexts() {
  meta_allocation_ = meta_depth_ = false;
  meta_bitmaps_.assign(config_.bitmaps.size(), false);
}

void Session::handle_meta_context(bool set) {
  const std::span<const std::byte> data = input_buffer_;
  const uint32_t option = option_;
  if (!chunked()) {
    option_error(option, kRepErrInvalid, "structured replies not negotiated");
    return;
  }
  if (data.size() < 8) {
    option_error(option, kRepErrInvalid, "option too short");
    return;
  }
  const uint32_t name_length = load32(data.data());
  if (name_length > data.size() - 8) {
    option_error(option, kRepErrInvalid, "export name longer than the option");
    return;
  }
  const std::string name(reinterpret_cast<const char*>(data.data() + 4), name_length);
  const uint32_t query_count = load32(data.data() + 4 + name_length);
  size_t position = 8 + name_length;
  std::vector<std::string_view> queries;
  for (uint32_t i = 0; i < query_count; ++i) {
    if (data.size() - position < 4) {
      option_error(option, kRepErrInvalid, "query count does not match the option length");
      return;
    }
    const uint32_t length = load32(data.data() + position);
    position += 4;
    if (length > data.size() - position) {
      option_error(option, kRepErrInvalid, "query longer than the option");
      return;
    }
    queries.emplace_back(reinterpret_cast<const char*>(data.data() + position), length);
    position += length;
  }
  if (position != data.size()) {
    option_error(option, kRepErrInvalid, "trailing bytes after the queries");
    return;
  }
  if (name != config_.name) {
    option_error(option, kRepErrUnknown, fmt::format("export '{}' not present", name));
    return;
  }
  bool allocation = false;
  bool depth = false;
  std::vector<bool> bitmaps(config_.bitmaps.size(), false);
  if (!set && queries.empty()) {
    allocation = true;
    depth = config_.allocation_depth;
    bitmaps.assign(bitmaps.size(), true);
  }
  for (std::string_view query : queries) {
    if (query == kAllocationName || (!set && query == "base:")) allocation = true;
    if (config_.allocation_depth && (query == kDepthName || (!set && query == "qemu:"))) depth = true;
    for (size_t i = 0; i < bitmaps.size(); ++i) {
      const bool exact = query.starts_with(kBitmapPrefix) && query.substr(kBitmapPrefix.size()) == config_.bitmaps[i];
      if (exact || (!set && (query == "qemu:" || query == kBitmapPrefix))) bitmaps[i] = true;
    }
  }
  auto announce = [&](uint32_t id, std::string_view context) {
    std::vector<std::byte> reply(4 + context.size());
    std::memcpy(store32(reply.data(), set ? id : 0), context.data(), context.size());
    option_reply(option, kRepMetaContext, reply);
  };
  if (allocation) announce(kContextAllocation, kAllocationName);
  if (depth) announce(kContextDepth, kDepthName);
  for (size_t i = 0; i < bitmaps.size(); ++i) {
    if (bitmaps[i]) announce(kContextFirstBitmap + static_cast<uint32_t>(i), std::string(kBitmapPrefix) + config_.bitmaps[i]);
  }
  if (set) {
    meta_allocation_ = allocation;
    meta_depth_ = depth;
    meta_bitmaps_ = std::move(bitmaps);
    meta_export_ = name;
  }
  option_reply(option, kRepAck);
}

uint16_t Session::transmission_flags() const {
  uint16_t flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendCache;
  if (config_.read_only) {
    flags |= kTxReadOnly;
  } else {
    flags |= kTxSendTrim | kTxSendWriteZeroes | kTxSendFastZero;
  }
  if (chunked()) flags |= kTxSendDf;
  if (config_.multi_conn) flags |= kTxCanMultiConn;
  return flags;
}

void Session::enter_transmission() {
  phase_ = Phase::Transmission;
  input_buffer_.assign(request_header_size(), std::byte{0});
  input_filled_ = 0;
}

// ---- Transmission ----------------------------------------------------------

Session::Request& Session::acquire(uint64_t payload_bytes) {
  std::unique_lock lock(mutex_);
  slot_freed_.wait(lock, [&] {
    return in_flight_ == 0 || (in_flight_ < limits_.max_in_flight && in_flight_bytes_ + payload_bytes <= limits_.max_in_flight_bytes);
  });
  Request* request;
  if (free_requests_.empty()) {
    requests_.push_back(std::make_unique<Request>(*this));
    request = requests_.back().get();
  } else {
    request = free_requests_.back();
    free_requests_.pop_back();
  }
  ++in_flight_;
  in_flight_bytes_ += payload_bytes;
  request->reserved_bytes = payload_bytes;
  request->error = 0;
  request->read_plan = Request::ReadPlan::None;
  return *request;
}

void Session::release(Request& request) {
  buffers_->give(std::exchange(request.buffer, {}));
  std::lock_guard lock(mutex_);
  --in_flight_;
  in_flight_bytes_ -= request.reserved_bytes;
  free_requests_.push_back(&request);
  slot_freed_.notify_all();
}

void Session::drain() {
  // A request whose payload never fully arrived is abandoned unanswered.
  if (current_ != nullptr) release(*std::exchange(current_, nullptr));
  phase_ = Phase::Done;
  finished_ = true;
  std::unique_lock lock(mutex_);
  slot_freed_.wait(lock, [&] { return in_flight_ == 0; });
}

void Session::on_request_header() {
  const std::byte* header = input_buffer_.data();
  // The header style is fixed by negotiation; the other style cannot even be
  // framed, so a mismatch is a protocol violation that ends the connection.
  const uint32_t magic = load32(header);
  if (magic != (extended_ ? kExtendedRequestMagic : kRequestMagic)) {
    if (magic == kRequestMagic || magic == kExtendedRequestMagic) {
      finish(extended_ ? "compact request header after extended headers were negotiated"
                       : "extended request header without NBD_OPT_EXTENDED_HEADERS");
    } else {
      finish("bad request magic");
    }
    return;
  }
  const uint16_t flags = load16(header + 4);
  const uint16_t type = load16(header + 6);
  if (type == kCmdDisc) {
    finish("");
    return;
  }
  const uint64_t length = extended_ ? load64(header + 24) : load32(header + 24);
  // Compact headers: only WRITE carries a payload. Extended headers: exactly
  // the requests flagged NBD_CMD_FLAG_PAYLOAD_LEN do.
  const bool has_payload = extended_ ? (flags & kCmdFlagPayloadLen) != 0 : type == kCmdWrite;
  if (extended_ && has_payload && length > kMaxPayload) {
    finish(fmt::format("payload of {} bytes exceeds the advertised maximum", length));
    return;
  }
  const bool oversized = (type == kCmdWrite || type == kCmdRead) && length > kMaxPayload;
  const bool buffered = !oversized && (type == kCmdRead || (type == kCmdWrite && has_payload));
  Request& request = acquire(buffered ? length : 0);
  request.flags = flags;
  request.type = type;
  request.cookie = load64(header + 8);
  request.offset = load64(header + 16);
  request.length = length;
  request.error = check_request(request);
  if (!has_payload) {
    dispatch(request);
    return;
  }
  current_ = &request;
  if (oversized || request.error != 0) {
    // Skip the payload without holding it, then refuse the request.
    if (request.error == 0) request.error = kErrInval;
    phase_ = Phase::PayloadDiscard;
    discard_remaining_ = length;
    if (length == 0) {
      phase_ = Phase::Transmission;
      current_ = nullptr;
      dispatch(request);
      return;
    }
    input_buffer_.resize(std::min<uint64_t>(length, kDiscardChunk));
    return;
  }
  if (request.buffer.size() < length) request.buffer = buffers_->take(length);
  if (length == 0) {
    current_ = nullptr;
    dispatch(request);
    return;
  }
  phase_ = Phase::RequestPayload;
}

uint32_t Session::check_request(const Request& request) {
  uint16_t allowed = kCmdFlagFua;
  switch (request.type) {
    case kCmdRead:
      if (chunked()) allowed |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
    case kCmdWrite:
      // With extended headers a WRITE must say that its length is a payload.
      if (extended_) {
        if (!(request.flags & kCmdFlagPayloadLen)) return kErrInval;
        allowed |= kCmdFlagPayloadLen;
      }
      break;
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
      break;
    default:
      return kErrInval;
  }
  if (request.flags & ~allowed) return kErrInval;
  if ((request.type == kCmdRead || request.type == kCmdWrite) && request.length > kMaxPayload) return kErrInval;
  const bool writes = request.type == kCmdWrite || request.type == kCmdWriteZeroes || request.type == kCmdTrim;
  if (writes && config_.read_only) return kErrPerm;
  if (request.type == kCmdFlush) return 0;
  const uint64_t size = config_.node->size();
  if (request.offset > size || request.length > size - request.offset) {
    return request.type == kCmdWrite || request.type == kCmdWriteZeroes ? kErrNoSpc : kErrInval;
  }
  if (request.type == kCmdBlockStatus) {
    const bool any_bitmap = std::find(meta_bitmaps_.begin(), meta_bitmaps_.end(), true) != meta_bitmaps_.end();
    if (!chunked() || (!meta_allocation_ && !meta_depth_ && !any_bitmap) || request.length == 0) return kErrInval;
  }
  return 0;
}

void Session::dispatch(Request& request) {
  if (request.error != 0) {
    reply_error(request, request.error, "invalid request");
    release(request);
    return;
  }
  if (request.type == kCmdRead && read_now(request)) {
    release(request);
    return;
  }
  executor_.submit(request);
}

// A READ whose data is all in the page cache is answered right here, on the
// connection's thread: no hand-off to a worker (two wake-ups and a lock per
// request). Anything that could block on the disk or fail goes to a worker.
bool Session::read_now(Request& request) {
  if (request.length == 0 || request.length > kMaxReadNow) return false;
  try {
    plan_read(request);
    if (!in_files(request)) return false;
    for (const block::HostExtent& file : request.files) {
      if (!in_page_cache(file)) return false;
    }
    // Counted before the reply can reach the client (which may then look).
    count(&ReadStats::answered_now);
    try {
      if (request.length > output_.file_capacity() || !send_read_from_files(request)) send_read_from_memory(request);
    } catch (...) {
      count(&ReadStats::answered_now, -1);
      throw;
    }
  } catch (const std::exception&) {
    return false;  // the worker retries and replies with the error
  }
  return true;
}

void Session::execute(Request& request) {
  try {
    block::Node& node = *config_.node;
    switch (request.type) {
      case kCmdRead:
        do_read(request);
        break;
      case kCmdWrite:
        do_write(request);
        reply_done(request);
        break;
      case kCmdWriteZeroes:
        do_write_zeroes(request);
        reply_done(request);
        break;
      case kCmdTrim:
        if (config_.discard_unmap && request.length > 0) node.discard(request.offset, request.length);
        if (request.flags & kCmdFlagFua) node.flush();
        reply_done(request);
        break;
      case kCmdFlush:
        node.flush();
        reply_done(request);
        break;
      case kCmdCache:  // advisory; the page cache of the host does the rest
        reply_done(request);
        break;
      case kCmdBlockStatus:
        do_block_status(request);
        break;
    }
  } catch (const Error& error) {
    log::debug("nbd: request failed: {}", error.what());
    reply_error(request, nbd_error_from_errno(error.errno_value()), error.what());
  } catch (const std::bad_alloc&) {
    reply_error(request, kErrNoMem, "out of memory");
  } catch (const std::exception& error) {
    reply_error(request, kErrIo, error.what());
  }
  release(request);
}

void Session::reply_simple(Request& request, uint32_t error, std::span<const std::byte> data) {
  std::array<std::byte, 16> header{};
  std::byte* p = store32(header.data(), kSimpleReplyMagic);
  p = store32(p, error);
  store64(p, request.cookie);
  const std::span<const std::byte> parts[] = {header, data};
  output_.send(parts);
}

size_t Session::chunk_header(std::byte* out, const Request& request, uint16_t flags, uint16_t type,
                             uint64_t payload_length) const {
  if (extended_) {
    std::byte* p = store32(out, kExtendedReplyMagic);
    p = store16(p, flags);
    p = store16(p, type);
    p = store64(p, request.cookie);
    p = store64(p, request.offset);  // the request's offset, whatever the chunk describes
    store64(p, payload_length);
    return kExtendedReplyHeaderSize;
  }
  std::byte* p = store32(out, kStructuredReplyMagic);
  p = store16(p, flags);
  p = store16(p, type);
  p = store64(p, request.cookie);
  store32(p, static_cast<uint32_t>(payload_length));
  return kStructuredHeaderSize;
}

void Session::reply_none(Request& request) {
  std::array<std::byte, kExtendedReplyHeaderSize> header{};
  const size_t size = chunk_header(header.data(), request, kReplyFlagDone, kChunkNone, 0);
  const std::span<const std::byte> parts[] = {std::span<const std::byte>(header).first(size)};
  output_.send(parts);
}

// Extended headers forbid simple replies, even without payload.
void Session::reply_done(Request& request) {
  if (extended_) {
    reply_none(request);
  } else {
    reply_simple(request, 0);
  }
}

void Session::reply_error(Request& request, uint32_t error, std::string_view message) {
  if (!chunked()) {
    reply_simple(request, error);
    return;
  }
  message = message.substr(0, kMaxStringLength);
  std::array<std::byte, kExtendedReplyHeaderSize + 6> header{};
  const size_t size = chunk_header(header.data(), request, kReplyFlagDone, kChunkError, 6 + message.size());
  store16(store32(header.data() + size, error), static_cast<uint16_t>(message.size()));
  const std::span<const std::byte> parts[] = {std::span<const std::byte>(header).first(size + 6), bytes(message)};
  output_.send(parts);
}

void Session::plan_read(Request& request) {
  // The reply's extents: holes become hole chunks in structured replies
  // without DF; otherwise the whole range is one piece of data.
  request.extents.clear();
  request.read_plan = Request::ReadPlan::Extents;
  if (!chunked() || (request.flags & kCmdFlagDf)) {
    request.extents.push_back({request.length, true, false, 1});
    return;
  }
  block::Node& node = *config_.node;
  for (uint64_t position = 0; position < request.length;) {
    ExtentStatus status{request.length - position, true, false, 1};
    try {
      status = chain_status(node, request.offset + position, request.length - position);
    } catch (const Error&) {
      // Without status information the range is simply read.
    }
    const bool hole = status.zero;
    if (!request.extents.empty() && request.extents.back().zero == hole) {
      request.extents.back().length += status.length;
    } else {
      request.extents.push_back({status.length, !hole, hole, 0});
    }
    position += status.length;
  }
}

void Session::do_read(Request& request) {
  if (request.length == 0) {
    if (chunked()) {
      reply_none(request);  // a content chunk must describe at least one byte
    } else {
      reply_simple(request, 0);
    }
    return;
  }
  if (request.read_plan == Request::ReadPlan::None) plan_read(request);
  if (request.length <= output_.file_capacity() && in_files(request) && send_read_from_files(request)) return;
  send_read_from_memory(request);
}

void Session::send_read_from_memory(Request& request) {
  block::Node& node = *config_.node;
  // Read every data extent first, then send: an error never follows data
  // already sent.
  if (request.buffer.size() < request.length) request.buffer = buffers_->take(request.length);
  const std::span<std::byte> buffer = std::span(request.buffer).first(request.length);
  uint64_t position = 0;
  for (const ExtentStatus& extent : request.extents) {
    if (!extent.zero) node.read(request.offset + position, buffer.subspan(position, extent.length));
    position += extent.length;
  }
  build_read_reply(request, buffer);
  request.spans.clear();
  for (const ReplyPart& part : request.parts) request.spans.push_back(part.memory);
  count(&ReadStats::copied);
  output_.send(request.spans);
}

// Whether the planned READ's data bytes all lie verbatim in host files (not
// compressed, encrypted, remote...); maps them into request.files once.
bool Session::in_files(Request& request) {
  using enum Request::ReadPlan;
  if (request.read_plan == Extents) request.read_plan = map_read_to_files(request) ? InFiles : NotInFiles;
  return request.read_plan == InFiles;
}

bool Session::map_read_to_files(Request& request) {
  block::Node& node = *config_.node;
  request.files.clear();
  uint64_t position = 0;
  for (const ExtentStatus& extent : request.extents) {
    for (uint64_t done = 0; !extent.zero && done < extent.length;) {
      const std::optional<block::HostExtent> host = node.host_extent(request.offset + position + done, extent.length - done);
      if (!host) return false;
      block::HostExtent* last = request.files.empty() ? nullptr : &request.files.back();
      if (last != nullptr && last->fd == host->fd && last->offset + last->length == host->offset) {
        last->length += host->length;
      } else {
        request.files.push_back(*host);
      }
      done += host->length;
    }
    position += extent.length;
  }
  return true;
}

// The zero-copy READ reply: the output moves the data from the page cache to
// the socket. False: nothing was sent.
bool Session::send_read_from_files(Request& request) {
  build_read_reply(request, {});
  count(&ReadStats::zero_copy);
  if (output_.send_with_files(request.parts, request.files)) return true;
  count(&ReadStats::zero_copy, -1);
  return false;
}

// The planned READ's reply in request.parts: a simple reply, or one chunk per
// extent. Data comes from `data` (read into memory) or, when it is empty,
// from the reply's file ranges.
void Session::build_read_reply(Request& request, std::span<const std::byte> data) {
  auto data_part = [&](uint64_t position, uint64_t length) {
    return data.empty() ? ReplyPart{.file_bytes = length} : ReplyPart{.memory = data.subspan(position, length)};
  };
  // Every header first (the parts point into `headers`), then the parts.
  constexpr size_t kSlot = kExtendedReplyHeaderSize + 12;
  request.headers.resize(request.extents.size() * kSlot);
  request.parts.clear();
  if (!chunked()) {
    std::byte* p = store32(request.headers.data(), kSimpleReplyMagic);
    store64(store32(p, 0), request.cookie);
    request.parts.push_back({.memory = std::span<const std::byte>(request.headers).first(16)});
    request.parts.push_back(data_part(0, request.length));
    return;
  }
  uint64_t position = 0;
  for (size_t i = 0; i < request.extents.size(); ++i) {
    const ExtentStatus& extent = request.extents[i];
    const uint16_t flags = i + 1 == request.extents.size() ? kReplyFlagDone : 0;
    std::byte* header = request.headers.data() + i * kSlot;
    // Read lengths are capped at kMaxPayload, so extent lengths fit 32 bits.
    if (extent.zero) {
      const size_t size = chunk_header(header, request, flags, kChunkOffsetHole, 12);
      store32(store64(header + size, request.offset + position), static_cast<uint32_t>(extent.length));
      request.parts.push_back({.memory = {header, size + 12}});
    } else {
      const size_t size = chunk_header(header, request, flags, kChunkOffsetData, 8 + extent.length);
      store64(header + size, request.offset + position);
      request.parts.push_back({.memory = {header, size + 8}});
      request.parts.push_back(data_part(position, extent.length));
    }
    position += extent.length;
  }
}

void Session::do_write(Request& request) {
  block::Node& node = *config_.node;
  const std::span<const std::byte> data = std::span(request.buffer).first(request.length);
  if (data.empty()) return;
  const bool fua = (request.flags & kCmdFlagFua) || config_.writethrough;
  if (config_.detect_zeroes != DetectZeroes::Off && is_zero(data)) {
    const bool unmap = config_.detect_zeroes == DetectZeroes::Unmap && config_.discard_unmap;
    node.write_zeroes(request.offset, request.length, {.may_unmap = unmap, .no_fallback = false});
    if (fua) node.flush();
    return;
  }
  node.write(request.offset, data, {.fua = fua});
}

void Session::do_write_zeroes(Request& request) {
  if (request.length == 0) return;
  block::Node& node = *config_.node;
  const block::ZeroFlags flags{.may_unmap = !(request.flags & kCmdFlagNoHole) && config_.discard_unmap,
                               .no_fallback = (request.flags & kCmdFlagFastZero) != 0};
  node.write_zeroes(request.offset, request.length, flags);
  if ((request.flags & kCmdFlagFua) || config_.writethrough) node.flush();
}

void Session::do_block_status(Request& request) {
  block::Node& node = *config_.node;
  const bool one = request.flags & kCmdFlagReqOne;
  request.extents.clear();
  if (meta_allocation_ || meta_depth_) {
    for (uint64_t position = 0; position < request.length && request.extents.size() < kMaxStatusDescriptors;) {
      ExtentStatus status = chain_status(node, request.offset + position, request.length - position);
      request.extents.push_back(status);
      position += status.length;
      if (one) break;
    }
  }
  // One chunk per selected context, ids in increasing order; the last has the DONE flag.
  std::vector<uint32_t> selected;
  if (meta_allocation_) selected.push_back(kContextAllocation);
  if (meta_depth_) selected.push_back(kContextDepth);
  for (size_t i = 0; i < meta_bitmaps_.size(); ++i) {
    if (meta_bitmaps_[i]) selected.push_back(kContextFirstBitmap + static_cast<uint32_t>(i));
  }
  // Extended headers always use NBD_REPLY_TYPE_BLOCK_STATUS_EXT: 64-bit
  // lengths and a descriptor count. Compact requests cover under 4 GiB, so
  // merged runs there always fit the 32-bit descriptors.
  const size_t header_size = extended_ ? kExtendedReplyHeaderSize : kStructuredHeaderSize;
  const size_t prefix_size = header_size + (extended_ ? 8 : 4);
  const size_t descriptor_size = extended_ ? 16 : 8;
  for (uint32_t id : selected) {
    std::vector<std::byte>& payload = request.status_payload;
    payload.resize(prefix_size);
    uint64_t run_length = 0;
    uint32_t run_flags = 0;
    auto flush_run = [&] {
      if (run_length == 0) return;
      const size_t at = payload.size();
      payload.resize(at + descriptor_size);
      if (extended_) {
        store32(store32(store64(payload.data() + at, run_length), 0), run_flags);
      } else {
        store32(store32(payload.data() + at, static_cast<uint32_t>(run_length)), run_flags);
      }
    };
    // Adjacent extents with equal flags merge.
    auto add = [&](uint64_t length, uint32_t flags) {
      if (run_length > 0 && flags == run_flags) {
        run_length += length;
      } else {
        flush_run();
        run_length = length;
        run_flags = flags;
      }
    };
    if (id == kContextAllocation || id == kContextDepth) {
      for (const ExtentStatus& e : request.extents) {
        add(e.length, id == kContextAllocation ? (e.data ? 0 : kStateHole) | (e.zero ? kStateZero : 0) : e.depth);
      }
    } else {
      // Dirty runs never repeat a state, so each is one descriptor.
      const std::string& bitmap = config_.bitmaps[id - kContextFirstBitmap];
      size_t descriptors = 0;
      for (uint64_t position = 0; position < request.length && descriptors < kMaxStatusDescriptors; ++descriptors) {
        const block::Node::DirtyRun run =
            config_.bitmap_node->dirty_bitmap_status(bitmap, request.offset + position, request.length - position);
        add(run.length, run.dirty ? kStateDirty : 0);
        position += run.length;
        if (one) break;
      }
    }
    flush_run();
    chunk_header(payload.data(), request, id == selected.back() ? kReplyFlagDone : 0,
                 extended_ ? kChunkBlockStatusExt : kChunkBlockStatus, payload.size() - header_size);
    std::byte* p = store32(payload.data() + header_size, id);
    if (extended_) store32(p, static_cast<uint32_t>((payload.size() - prefix_size) / descriptor_size));
    const std::span<const std::byte> parts[] = {payload};
    output_.send(parts);
  }
}

}  // namespace kiln::nbd
