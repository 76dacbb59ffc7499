// A kiln-nbd server inside the test process on a UNIX socket in a temp dir,
// with libnbd handles to drive it.
#pragma once

#include <gtest/gtest.h>
#include <libnbd.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "kiln/block/image.h"
#include "server.h"

namespace kiln::nbd::test {

struct HandleCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using Handle = std::unique_ptr<nbd_handle, HandleCloser>;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "kiln-nbd-test.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct ServerSetup {
  bool read_only = false;
  std::string format = "raw";
  bool allocation_depth = false;
  bool discard_unmap = true;
  unsigned shared = 8;
  bool multi_conn = false;
  std::string name;
  std::string description;
  SessionLimits limits;
};

class RunningServer {
 public:
  RunningServer(const std::filesystem::path& image_path, const ServerSetup& setup, const std::filesystem::path& socket)
      : socket_(socket) {
    block::OpenOptions open_options;
    open_options.format = setup.format;
    open_options.read_only = setup.read_only;
    image_ = block::Image::open(image_path.string(), open_options);
    ServerOptions options;
    options.export_config = {.node = &image_->top(),
                             .name = setup.name,
                             .description = setup.description,
                             .read_only = setup.read_only,
                             .multi_conn = setup.multi_conn,
                             .discard_unmap = setup.discard_unmap,
                             .allocation_depth = setup.allocation_depth};
    options.persistent = true;
    options.shared = setup.shared;
    options.limits = setup.limits;
    options.workers = 4;
    std::vector<UniqueFd> listeners;
    listeners.push_back(listen_unix(socket.string()));
    server_ = std::make_unique<Server>(std::move(options), std::move(listeners));
    thread_ = std::thread([this] { server_->run(); });
  }
  ~RunningServer() {
    server_->stop();
    thread_.join();
    server_.reset();
    image_->flush();
  }
  std::string uri(const std::string& name = "") const { return "nbd+unix:///" + name + "?socket=" + socket_.string(); }
  block::Image& image() { return *image_; }
  const ReadStats& read_stats() const { return server_->read_stats(); }

 private:
  std::filesystem::path socket_;
  std::unique_ptr<block::Image> image_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

inline void write_file(const std::filesystem::path& path, uint64_t size) {
  std::ofstream(path, std::ios::binary).close();
  std::filesystem::resize_file(path, size);
}

inline Handle connect(const std::string& uri, bool depth = false) {
  Handle h(nbd_create());
  nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (depth) nbd_add_meta_context(h.get(), "qemu:allocation-depth");
  if (nbd_connect_uri(h.get(), uri.c_str()) == -1) {
    ADD_FAILURE() << "connect " << uri << ": " << nbd_get_error();
    return nullptr;
  }
  return h;
}

}  // namespace kiln::nbd::test
