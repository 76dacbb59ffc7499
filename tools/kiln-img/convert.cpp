// kiln-img convert: copy one or more images (concatenated) into a new or
// existing image of any format. Pipeline: a planner walks the sources' block
// status (holes and zeroes are never read), worker threads read data chunks,
// find zero runs (-S) and compress (-c) in parallel, and write — in order when
// the target format cares (-W lifts that), in any order for raw.
#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <sys/mman.h>

#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/progress.h"
#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

constexpr uint64_t kChunkSize = 2 << 20;

// A worker's chunk buffer, 2 MiB aligned and backed by a transparent huge
// page where the kernel allows it: one page fault per buffer instead of 512.
class ChunkBuffer {
 public:
  explicit ChunkBuffer(size_t size) : size_(round_up(size)) {
    void* memory = std::aligned_alloc(kHugePage, size_);
    if (memory == nullptr) throw std::bad_alloc();
    storage_.reset(static_cast<std::byte*>(memory));
    madvise(memory, size_, MADV_HUGEPAGE);  // advice only: without it, small pages
  }
  std::span<std::byte> span() { return {storage_.get(), size_}; }

 private:
  static constexpr size_t kHugePage = 2 << 20;
  static size_t round_up(size_t size) { return std::max<size_t>((size + kHugePage - 1) / kHugePage * kHugePage, kHugePage); }
  struct FreeDeleter {
    void operator()(std::byte* pointer) const { std::free(pointer); }
  };
  std::unique_ptr<std::byte[], FreeDeleter> storage_;
  size_t size_;
};

struct ConvertArgs {
  std::string source_format;
  std::string target_format = "raw";
  std::vector<std::string> options;
  std::vector<std::string> objects;
  std::string target_cache;
  std::string source_cache;
  std::string backing_file;
  std::string backing_format;
  std::string snapshot;
  std::string sparse_size = "4k";
  int coroutines = 8;
  bool progress = false;
  bool quiet = false;
  bool no_create = false;
  bool compress = false;
  bool out_of_order = false;
  bool target_is_zero = false;
  bool force_share = false;
  bool image_opts = false;
  std::vector<std::string> filenames;  // sources..., target
};

struct Segment {
  uint64_t offset;  // in the concatenated source
  uint64_t length;
  size_t source;
  uint64_t source_offset;
  enum class Kind { Copy, Zero, Skip } kind;  // Zero: nothing to read; Skip: left to the target's backing file
  uint64_t sequence;
};

class Converter {
 public:
  Converter(std::vector<std::unique_ptr<block::Image>> sources, block::Image& target, const ConvertArgs& args, uint64_t sparse_size,
            bool target_known_zero, bool ordered)
      : sources_(std::move(sources)),
        target_(target),
        args_(args),
        sparse_size_(sparse_size),
        target_known_zero_(target_known_zero),
        target_has_backing_(target.top().backing_child() != nullptr || !args.backing_file.empty()),
        ordered_(ordered),
        progress_(args.progress && !args.quiet) {
    for (const auto& source : sources_) total_ += source->size();
    progress_.set_total(total_);
    if (args_.compress) {
      // Whole clusters, 1 MiB at a time: per-chunk costs (planning, a read,
      // a write turn with its thread wake-up) spread over 16 clusters of 64 KiB.
      unit_ = std::max<uint64_t>(target_.top().cluster_size(), 512);
      chunk_ = std::max<uint64_t>(unit_, 1 << 20);
    }
  }

  void run() {
    const int thread_count = std::clamp(args_.coroutines, 1, 16);
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(thread_count));
    for (int i = 0; i < thread_count; ++i) workers.emplace_back([this] { work(); });
    for (auto& worker : workers) worker.join();
    if (failure_) std::rethrow_exception(failure_);
    progress_.finish();
  }

 private:
  // Next piece of the source with one status, or nothing when done.
  std::optional<Segment> next_segment() {
    std::lock_guard lock(plan_mutex_);
    if (failure_ || cursor_ >= total_) return std::nullopt;
    while (source_index_ < sources_.size() && cursor_ >= source_start_ + sources_[source_index_]->size()) {
      source_start_ += sources_[source_index_]->size();
      ++source_index_;
    }
    block::Image& source = *sources_[source_index_];
    const uint64_t local = cursor_ - source_start_;
    const uint64_t remaining = source.size() - local;
    // Compressed conversions plan a cluster at a time: ask the source about
    // a run once, not once per cluster (each answer costs system calls).
    if (!(status_valid_ && status_source_ == source_index_ && local >= status_start_ && local < status_start_ + status_.length)) {
      status_ = source.chain_status(local, remaining);
      status_source_ = source_index_;
      status_start_ = local;
      status_valid_ = true;
    }
    block::ChainStatus status = status_;
    status.length = status_start_ + status_.length - local;
    if (status.flags & block::kStatusOffsetValid) status.host_offset += local - status_start_;
    Segment segment{cursor_, status.length, source_index_, local, Segment::Kind::Copy, sequence_++};
    const bool allocated_in_top = status.depth == 0 && (status.flags & block::kStatusAllocated);
    if (target_has_backing_ && !allocated_in_top) {
      segment.kind = Segment::Kind::Skip;
    } else if (args_.compress) {
      // Compressed clusters are written whole: a cluster is zero only when all of it is.
      const uint64_t span = std::min(chunk_, remaining);
      const bool zero = (status.flags & block::kStatusZero) && status.length >= span;
      segment.kind = zero ? Segment::Kind::Zero : Segment::Kind::Copy;
      segment.length = zero && status.length >= chunk_ ? status.length / chunk_ * chunk_ : span;
    } else if (status.flags & block::kStatusZero) {
      // Reads as zeroes, stored or not (flat VMDK holes report data + zero, as
      // in qemu): never read it, write zeroes (or a hole) instead.
      segment.kind = Segment::Kind::Zero;
    } else {
      segment.length = std::min(status.length, chunk_);
    }
    cursor_ += segment.length;
    return segment;
  }

  void work() {
    ChunkBuffer buffer(chunk_);
    std::vector<CompressedRun> runs;
    std::condition_variable my_turn;
    try {
      while (auto segment = next_segment()) {
        std::span<std::byte> data;
        if (segment->kind == Segment::Kind::Copy) {
          data = buffer.span().first(segment->length);
          sources_[segment->source]->read(segment->source_offset, data);
        }
        // Compress before waiting for our turn, so clusters compress on
        // every thread while the writes stay in order.
        if (args_.compress && segment->kind == Segment::Kind::Copy) prepare_compressed(segment->offset, data, runs);
        wait_turn(segment->sequence, my_turn);
        if (segment->kind == Segment::Kind::Copy && args_.compress) {
          for (const CompressedRun& run : runs) {
            const auto piece = data.subspan(run.begin, run.length);
            if (run.zero) {
              write_zero_range(segment->offset + run.begin, run.length);
            } else {
              target_.write_compressed_prepared(segment->offset + run.begin, piece, run.prepared);
            }
          }
        } else if (segment->kind == Segment::Kind::Copy) {
          write_data(segment->offset, data);
        }
        if (segment->kind == Segment::Kind::Zero) write_zero_range(segment->offset, segment->length);
        finish_turn(segment->length);
      }
    } catch (...) {
      std::lock_guard lock(plan_mutex_);
      if (!failure_) failure_ = std::current_exception();
      wake_all_on_failure();
    }
  }

  // A chunk split into runs of whole clusters that are all zero (with -S) or
  // all data, the data runs compressed. `runs` keeps its buffers across chunks.
  struct CompressedRun {
    uint64_t begin = 0;
    uint64_t length = 0;
    bool zero = false;
    block::Node::PreparedCompressed prepared;
  };
  void prepare_compressed(uint64_t offset, std::span<const std::byte> data, std::vector<CompressedRun>& runs) {
    size_t count = 0;
    for (uint64_t position = 0; position < data.size();) {
      const uint64_t length = std::min<uint64_t>(unit_, data.size() - position);
      const bool zero = sparse_size_ != 0 && is_zero(data.subspan(position, length));
      if (count > 0 && runs[count - 1].zero == zero) {
        runs[count - 1].length += length;
      } else {
        if (runs.size() == count) runs.emplace_back();
        runs[count].begin = position;
        runs[count].length = length;
        runs[count].zero = zero;
        ++count;
      }
      position += length;
    }
    runs.resize(count);
    for (CompressedRun& run : runs) {
      if (!run.zero) target_.compress_for_write(offset + run.begin, data.subspan(run.begin, run.length), run.prepared);
    }
  }

  void write_zero_range(uint64_t offset, uint64_t length) {
    // -S 0 asks for a fully allocated target, so even known zeroes are written.
    if (target_known_zero_ && !target_has_backing_ && sparse_size_ != 0) return;
    target_.write_zeroes(offset, length, {.may_unmap = sparse_size_ != 0});
  }

  void write_data(uint64_t offset, std::span<const std::byte> data) {
    if (sparse_size_ == 0) {
      target_.write(offset, data);
      return;
    }
    // Split into runs of zero and non-zero granules of sparse_size bytes.
    size_t position = 0;
    while (position < data.size()) {
      const size_t granule = std::min<size_t>(sparse_size_ - (offset + position) % sparse_size_, data.size() - position);
      const bool zero = is_zero(data.subspan(position, granule));
      size_t end = position + granule;
      while (end < data.size()) {
        const size_t next = std::min<size_t>(sparse_size_, data.size() - end);
        if (is_zero(data.subspan(end, next)) != zero) break;
        end += next;
      }
      if (zero) {
        write_zero_range(offset + position, end - position);
      } else {
        target_.write(offset + position, data.subspan(position, end - position));
      }
      position = end;
    }
  }

  // Each waiter sleeps on its own condition variable and only the holder of
  // the next ticket is woken: a broadcast would wake every worker per write.
  void wait_turn(uint64_t sequence, std::condition_variable& my_turn) {
    if (!ordered_) return;
    std::unique_lock lock(plan_mutex_);
    if (next_to_write_ != sequence && !failure_) {
      waiters_.emplace(sequence, &my_turn);
      my_turn.wait(lock, [&] { return next_to_write_ == sequence || failure_; });
      waiters_.erase(sequence);
    }
    if (failure_) throw Error(ECANCELED, "conversion cancelled");
  }

  void finish_turn(uint64_t length) {
    progress_.advance(length);
    if (!ordered_) return;
    std::lock_guard lock(plan_mutex_);
    ++next_to_write_;
    if (auto next = waiters_.find(next_to_write_); next != waiters_.end()) next->second->notify_one();
  }

  void wake_all_on_failure() {
    for (auto& [sequence, waiter] : waiters_) waiter->notify_one();
  }

  std::vector<std::unique_ptr<block::Image>> sources_;
  block::Image& target_;
  const ConvertArgs& args_;
  const uint64_t sparse_size_;
  const bool target_known_zero_;
  const bool target_has_backing_;
  const bool ordered_;
  uint64_t chunk_ = kChunkSize;
  uint64_t unit_ = 0;  // with -c: the target's cluster size
  uint64_t total_ = 0;
  Progress progress_;

  std::mutex plan_mutex_;
  std::map<uint64_t, std::condition_variable*> waiters_;  // sequence → its sleeping worker
  uint64_t cursor_ = 0;
  size_t source_index_ = 0;
  uint64_t source_start_ = 0;
  uint64_t sequence_ = 0;
  block::ChainStatus status_;  // the last answer of the source, from status_start_ on
  size_t status_source_ = 0;
  uint64_t status_start_ = 0;
  bool status_valid_ = false;
  uint64_t next_to_write_ = 0;
  std::exception_ptr failure_;
};

uint64_t parse_sparse_size(const std::string& text) {
  auto size = parse_size(text);
  if (!size || *size % 512 != 0 || *size > kChunkSize) {
    throw invalid_argument("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {}.", kChunkSize);
  }
  return *size;
}

std::string snapshot_name(const std::string& text) {
  if (text.rfind("snapshot.name=", 0) == 0) return text.substr(14);
  if (text.rfind("snapshot.id=", 0) == 0) return text.substr(12);
  return text;
}

int run_convert(const ConvertArgs& args) {
  if (args.filenames.size() < 2) throw invalid_argument("Expecting source and target image file names");
  if (args.target_is_zero && !args.no_create) throw invalid_argument("--target-is-zero requires use of -n flag");
  if (args.coroutines < 1 || args.coroutines > 16) throw invalid_argument("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
  const uint64_t sparse_size = parse_sparse_size(args.sparse_size);
  const auto secrets = parse_objects(args.objects);
  const std::string& target_name = args.filenames.back();

  std::vector<std::unique_ptr<block::Image>> sources;
  uint64_t total = 0;
  for (size_t i = 0; i + 1 < args.filenames.size(); ++i) {
    block::OpenOptions options;
    options.format = args.source_format;
    options.read_only = true;
    options.force_share = args.force_share;
    options.cache = parse_cache_or_throw(args.source_cache, block::CacheMode::Writeback);
    options.snapshot = args.snapshot.empty() ? "" : snapshot_name(args.snapshot);
    options.secrets = secrets;
    if (args.image_opts) {
      ImageArgs image_args{.format = args.source_format, .force_share = args.force_share, .cache = args.source_cache, .image_opts = true};
      sources.push_back(open_image(args.filenames[i], image_args, true, block::CacheMode::Writeback, secrets));
    } else {
      sources.push_back(block::Image::open(args.filenames[i], options));
    }
    total += sources.back()->size();
  }

  const block::FormatDriver* driver = block::find_format(args.target_format);
  if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", args.target_format);
  if (!args.no_create) {
    block::CreateOptions create;
    try {
      create = block::parse_create_options(*driver, join_options(args.options));
    } catch (const Error& error) {
      throw with_context(error, target_name);
    }
    create.size = total;
    create.secrets = secrets;
    if (!args.backing_file.empty()) {
      if (!driver->supports_backing()) throw invalid_argument("Backing file not supported for file format '{}'", args.target_format);
      create.values.emplace_back("backing_file", args.backing_file);
      if (!args.backing_format.empty()) create.values.emplace_back("backing_fmt", args.backing_format);
    }
    std::erase_if(create.values, [](const auto& kv) { return kv.first == "size"; });
    try {
      block::create_image(target_name, args.target_format, create);
    } catch (const Error& error) {
      throw with_context(error, target_name);
    }
  }

  block::OpenOptions target_options;
  target_options.format = args.target_format;
  target_options.cache = parse_cache_or_throw(args.target_cache, block::CacheMode::Unsafe);
  target_options.secrets = secrets;
  auto target = block::Image::open(target_name, target_options);
  if (target->size() < total) {
    throw invalid_argument("Target '{}' is smaller than the source ({} < {} bytes)", target_name, target->size(), total);
  }
  if (args.compress && !target->top().supports_compressed_writes()) throw invalid_argument("Compression not supported for this file format");

  const bool target_known_zero = !args.no_create || args.target_is_zero;
  const bool ordered = !args.out_of_order && args.target_format != "raw";
  Converter converter(std::move(sources), *target, args, sparse_size, target_known_zero, ordered);
  converter.run();
  target->flush();
  return 0;
}

}  // namespace

void register_convert(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* command = app.add_subcommand("convert", "Convert images: convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-S SIZE] [-n] SOURCE... TARGET");
  command->add_option("-f,--format", args->source_format, "Source format (probed when omitted)");
  command->add_option("-O,--output-format", args->target_format, "Target format (default raw)");
  command->add_option("-o,--options", args->options, "Target format options")->allow_extra_args(false);
  command->add_option("--object", args->objects, "Define an object such as secret,id=ID,data=TEXT")->allow_extra_args(false);
  command->add_option("-t,--target-cache", args->target_cache, "Target cache mode (default unsafe)");
  command->add_option("-T,--source-cache", args->source_cache, "Source cache mode (default writeback)");
  command->add_option("-B,--backing", args->backing_file, "Backing file of the target");
  command->add_option("-F,--backing-format", args->backing_format, "Format of the target's backing file");
  command->add_option("-l,--snapshot", args->snapshot, "Convert an internal snapshot of the source (NAME or snapshot.name=NAME)");
  command->add_option("-S,--sparse-size", args->sparse_size, "Zero runs this long (default 4k) become holes; 0 writes everything");
  command->add_option("-m,--num-coroutines", args->coroutines, "Requests in flight (1..16, default 8)");
  command->add_flag("-p,--progress", args->progress, "Show progress");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_flag("-n,--no-create", args->no_create, "Write into an existing target");
  command->add_flag("-c,--compress", args->compress, "Compress the target's data");
  command->add_flag("-W,--out-of-order", args->out_of_order, "Allow writes out of order");
  command->add_flag("--target-is-zero", args->target_is_zero, "The existing target reads as zeroes (with -n)");
  command->add_flag("-U,--force-share", args->force_share, "Open sources without exclusive locks");
  command->add_flag("--image-opts", args->image_opts, "Source names are option strings");
  command->add_option("filenames", args->filenames, "SOURCE... TARGET")->required();
  command->callback([&runner, args] { runner = [args] { return run_convert(*args); }; });
}

}  // namespace kiln::img
