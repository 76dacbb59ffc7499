// One NBD connection's protocol state machine, independent of sockets and TLS.
// The transport asks `input()` where the next bytes go, reads into it, and
// reports with `consumed(n)`; the session writes replies through `Output`.
// Transmission requests run on an `Executor` (a worker pool, or inline in the
// fuzzer) and may complete out of order. Memory per connection is bounded:
// at most `max_in_flight` requests and `max_in_flight_bytes` of payload.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kiln/block/node.h"
#include "wire.h"

namespace kiln::nbd {

enum class DetectZeroes { Off, On, Unmap };

// What the server exports. `node` must outlive every session.
struct ExportConfig {
  block::Node* node = nullptr;
  std::string name;
  std::string description;
  bool read_only = false;
  bool multi_conn = false;
  bool discard_unmap = false;     // --discard=unmap: TRIM and zero writes may punch holes
  DetectZeroes detect_zeroes = DetectZeroes::Off;
  bool allocation_depth = false;  // -A: offer qemu:allocation-depth
  // -B: persistent dirty bitmaps of `bitmap_node` offered as qemu:dirty-bitmap:NAME.
  block::Node* bitmap_node = nullptr;
  std::vector<std::string> bitmaps;
  bool writethrough = false;      // every write is made durable (cache=writethrough)
};

// Payload buffers shared by the connections of a server: a request takes one
// for its READ/WRITE data and gives it back when it completes. At most
// `max_idle_bytes` stay allocated while unused, so memory follows the
// requests in flight, not the number of connections, and buffers are still
// reused instead of being allocated per request.
class BufferPool {
 public:
  explicit BufferPool(size_t max_idle_bytes = 64u << 20) : max_idle_bytes_(max_idle_bytes) {}
  // A buffer of at least `size` bytes; its contents are unspecified.
  std::vector<std::byte> take(size_t size);
  void give(std::vector<std::byte> buffer);
  size_t idle_bytes() const;

 private:
  mutable std::mutex mutex_;
  std::vector<std::vector<std::byte>> idle_;
  size_t idle_bytes_ = 0;
  size_t max_idle_bytes_;
};

// How READ requests were served, across a server's sessions (for the log and tests).
struct ReadStats {
  std::atomic<uint64_t> copied{0};      // read into memory, then sent
  std::atomic<uint64_t> zero_copy{0};   // spliced from host files to the socket (or only holes)
  std::atomic<uint64_t> answered_now{0};  // of those, on the connection's thread (page cache hits)
};

struct SessionLimits {
  uint32_t max_in_flight = 16;
  uint64_t max_in_flight_bytes = 64u << 20;
  BufferPool* buffers = nullptr;  // shared by a server's sessions; null: the session keeps its own
  ReadStats* read_stats = nullptr;  // optional
};

// Part of a reply sent with file data: bytes in memory, or (when `memory`
// is empty) the next `file_bytes` bytes of the reply's file ranges.
struct ReplyPart {
  std::span<const std::byte> memory;
  uint64_t file_bytes = 0;
};

// Where replies go. Each call sends its parts contiguously (thread-safe).
class Output {
 public:
  virtual ~Output() = default;
  virtual void send(std::span<const std::span<const std::byte>> parts) = 0;
  // The most file bytes one send_with_files() takes; 0 when this output
  // cannot send file data without copying it (TLS, in-memory outputs).
  virtual uint64_t file_capacity() const { return 0; }
  // Sends `parts`, taking file bytes from `files` in order, without copying
  // them through user space. Returns false, having sent nothing, when the
  // ranges could not be read in full: the caller then reads into memory.
  virtual bool send_with_files(std::span<const ReplyPart> parts, std::span<const block::HostExtent> files) {
    (void)parts, (void)files;
    return false;
  }
};

// A unit of work for the executor; runs once.
class Task {
 public:
  virtual void run() = 0;

 protected:
  ~Task() = default;
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void submit(Task& task) = 0;
};

// Runs tasks on the calling thread (tests, fuzzing).
class InlineExecutor final : public Executor {
 public:
  void submit(Task& task) override { task.run(); }
};

class Session {
 public:
  Session(const ExportConfig& config, const SessionLimits& limits, Output& output, Executor& executor, bool tls_available,
          bool tls_required);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Sends the server greeting. Call once, first.
  void start();
  // Where the next input bytes go (never empty unless finished()).
  std::span<std::byte> input();
  // `count` bytes were written at the start of input(). May block while the
  // connection has too many requests in flight.
  void consumed(size_t count);

  // The transport must run the TLS handshake now, before reading more.
  bool tls_pending() const { return tls_pending_; }
  void tls_started();
  // No more input will be accepted; the transport drains and closes.
  bool finished() const { return finished_; }
  // Ends input and waits until every request in flight has replied.
  void drain();
  bool in_transmission() const { return phase_ == Phase::Transmission; }
  // Why the session ended (for the log), empty on a clean end.
  const std::string& end_reason() const { return end_reason_; }

 private:
  struct Request;
  enum class Phase { ClientFlags, OptionHeader, OptionData, OptionDiscard, Transmission, RequestPayload, PayloadDiscard, Done };

  void finish(std::string reason);
  void on_client_flags();
  void on_option_header();
  void on_option();
  void option_reply(uint32_t option, uint32_t type, std::span<const std::byte> data = {});
  void option_error(uint32_t option, uint32_t type, std::string_view message);
  void handle_export_name();
  void handle_info_go(bool go);
  void handle_meta_context(bool set);
  void forget_meta_contexts();
  void enter_transmission();
  uint16_t transmission_flags() const;

  void on_request_header();
  void dispatch(Request& request);
  void execute(Request& request);
  Request& acquire(uint64_t payload_bytes);
  void release(Request& request);
  void reply_simple(Request& request, uint32_t error, std::span<const std::byte> data = {});
  void reply_error(Request& request, uint32_t error, std::string_view message);
  void reply_done(Request& request);
  void reply_none(Request& request);  // NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE
  // Writes a structured or extended chunk header for `request` into `out`
  // (room for kExtendedReplyHeaderSize bytes); returns its size.
  size_t chunk_header(std::byte* out, const Request& request, uint16_t flags, uint16_t type, uint64_t payload_length) const;
  // Replies arrive as chunks (structured replies or extended headers).
  bool chunked() const { return structured_ || extended_; }
  size_t request_header_size() const { return extended_ ? kExtendedRequestHeaderSize : kRequestHeaderSize; }
  void do_read(Request& request);
  void plan_read(Request& request);
  bool in_files(Request& request);
  bool map_read_to_files(Request& request);
  bool send_read_from_files(Request& request);
  void send_read_from_memory(Request& request);
  void build_read_reply(Request& request, std::span<const std::byte> data);
  bool read_now(Request& request);
  // Counts a READ reply before it is sent, so a client that got it sees it counted.
  void count(std::atomic<uint64_t> ReadStats::*counter, int delta = 1) {
    if (limits_.read_stats != nullptr) (limits_.read_stats->*counter).fetch_add(static_cast<uint64_t>(delta), std::memory_order_relaxed);
  }
  void do_write(Request& request);
  void do_write_zeroes(Request& request);
  void do_block_status(Request& request);
  uint32_t check_request(const Request& request);

  ExportConfig config_;
  SessionLimits limits_;
  Output& output_;
  Executor& executor_;
  bool tls_available_;
  bool tls_required_;
  bool tls_active_ = false;
  bool tls_pending_ = false;
  bool finished_ = false;
  bool fixed_newstyle_ = false;
  bool no_zeroes_ = false;
  bool structured_ = false;
  bool extended_ = false;  // NBD_OPT_EXTENDED_HEADERS: 32-byte headers both ways
  std::string end_reason_;

  Phase phase_ = Phase::ClientFlags;
  std::vector<std::byte> input_buffer_;  // header or option data being filled
  size_t input_filled_ = 0;
  uint64_t discard_remaining_ = 0;
  uint32_t option_ = 0;

  // Meta contexts selected with SET_META_CONTEXT (ids 1 and 2).
  bool meta_allocation_ = false;
  bool meta_depth_ = false;
  std::vector<bool> meta_bitmaps_;  // per ExportConfig::bitmaps (ids 3, 4, ...)
  std::string meta_export_;

  // Requests: a pool reused across the connection's life.
  std::mutex mutex_;
  std::condition_variable slot_freed_;
  std::vector<std::unique_ptr<Request>> requests_;  // every request object ever made
  std::vector<Request*> free_requests_;
  uint32_t in_flight_ = 0;
  uint64_t in_flight_bytes_ = 0;
  Request* current_ = nullptr;  // request whose payload is being read
  std::unique_ptr<BufferPool> own_buffers_;
  BufferPool* buffers_;
};

// Maps a kiln::Error errno to the NBD wire error.
uint32_t nbd_error_from_errno(int err);

}  // namespace kiln::nbd
