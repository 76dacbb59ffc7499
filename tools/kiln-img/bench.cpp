// kiln-img bench: a simple I/O benchmark (qemu-img bench): COUNT requests of
// BUFFER_SIZE bytes, DEPTH in flight, stepping through the image.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct BenchArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  uint64_t count = 75000;
  int depth = 64;
  uint64_t flush_interval = 0;
  bool no_drain = false;
  bool direct = false;
  std::string aio;
  std::string offset = "0";
  int pattern = 0;
  bool quiet = false;
  std::string buffer_size = "4k";
  std::string step_size;
  bool write = false;
  std::string filename;
};

uint64_t parse_positive_size(const std::string& text, const char* what) {
  auto size = parse_size(text);
  if (!size || *size == 0 || *size > (1u << 30)) throw invalid_argument("Invalid {} specified", what);
  return *size;
}

int run_bench(const BenchArgs& args) {
  const uint64_t buffer_size = parse_positive_size(args.buffer_size, "buffer size");
  const uint64_t step = args.step_size.empty() ? buffer_size : parse_size(args.step_size).value_or(UINT64_MAX);
  if (step == UINT64_MAX) throw invalid_argument("Invalid step size specified");
  auto start = parse_size(args.offset);
  if (!start) throw invalid_argument("Invalid offset specified");
  if (args.depth < 1 || args.depth > 1024) throw invalid_argument("Invalid queue depth specified");
  if (args.pattern < 0 || args.pattern > 255) throw invalid_argument("Invalid pattern byte specified");
  if (args.flush_interval && !args.write) throw invalid_argument("--flush-interval is only available in write tests");
  if (args.flush_interval && args.flush_interval < static_cast<uint64_t>(args.depth)) {
    throw invalid_argument("Flush interval can't be smaller than depth");
  }
  if (!args.aio.empty() && args.aio != "threads" && args.aio != "native" && args.aio != "io_uring") {
    throw invalid_argument("Invalid aio option: {}", args.aio);
  }
  ImageArgs image_args = args.image;
  if (args.direct) image_args.cache = "none";
  auto image = open_image(args.filename, image_args, !args.write, block::CacheMode::Writeback, parse_objects(args.objects));
  const uint64_t image_size = image->size();
  if (buffer_size > image_size || *start > image_size - buffer_size) throw invalid_argument("Requests would go past the end of the image");

  if (!args.quiet) {
    fmt::print("Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n", args.count,
               args.write ? "write" : "read", buffer_size, args.depth, *start, step);
    if (args.flush_interval) fmt::print("Sending flush every {} requests\n", args.flush_interval);
    std::fflush(stdout);
  }

  // Request i goes to start + i*step, wrapping to start where it would pass the end.
  const uint64_t span = image_size - buffer_size - *start;
  const uint64_t positions = step == 0 ? 1 : span / step + 1;
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<bool> failed{false};
  std::string failure;
  std::mutex failure_mutex;
  const auto begin = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  const int threads = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(args.depth), args.count));
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      AlignedBuffer buffer(buffer_size);
      std::memset(buffer.data(), args.pattern, buffer_size);
      try {
        for (uint64_t i = next++; i < args.count && !failed; i = next++) {
          const uint64_t offset = *start + (i % positions) * step;
          if (args.write) {
            image->write(offset, buffer.span());
          } else {
            image->read(offset, buffer.span());
          }
          const uint64_t done = ++completed;
          if (args.flush_interval && done % args.flush_interval == 0) image->flush();
        }
      } catch (const Error& error) {
        std::lock_guard lock(failure_mutex);
        if (!failed.exchange(true)) failure = error.what();
      }
    });
  }
  for (auto& worker : workers) worker.join();
  if (failed) throw Error(EIO, failure);
  if (args.flush_interval && !args.no_drain) image->flush();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  if (!args.quiet) fmt::print("Run completed in {:.3f} seconds.\n", seconds);
  return 0;
}

}  // namespace

void register_bench(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* command = app.add_subcommand("bench", "I/O benchmark: bench [-c COUNT] [-d DEPTH] [-s SIZE] [-S STEP] [-w] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_option("-c,--count", args->count, "Number of requests (default 75000)");
  command->add_option("-d,--depth", args->depth, "Requests in flight (default 64)");
  command->add_option("--flush-interval", args->flush_interval, "Flush after this many write requests");
  command->add_flag("--no-drain", args->no_drain, "Do not wait for requests before the final flush");
  command->add_flag("-n,--nocache", args->direct, "Bypass the host page cache (cache=none)");
  command->add_option("-i,--aio", args->aio, "AIO mode: threads, native or io_uring");
  command->add_option("-o,--offset", args->offset, "First request's offset");
  command->add_option("--pattern", args->pattern, "Byte written by write requests (default 0)");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_option("-s,--buffer-size", args->buffer_size, "Request size (default 4k)");
  command->add_option("-S,--step-size", args->step_size, "Distance between requests (default: the request size)");
  command->add_option("-t,--cache", args->image.cache, "Cache mode");
  command->add_flag("-w,--write", args->write, "Write instead of read");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_bench(*args); }; });
}

}  // namespace kiln::img
