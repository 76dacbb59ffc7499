// guest-file-* handles: numbered from 1000 like qemu-ga, the counter kept in
// the state directory so handles stay unique across agent restarts.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

namespace kiln::ga {

class FileTable {
 public:
  explicit FileTable(std::string state_dir);
  ~FileTable();
  FileTable(const FileTable&) = delete;
  FileTable& operator=(const FileTable&) = delete;

  std::int64_t open(const std::string& path, const std::string& mode);
  std::FILE* get(std::int64_t handle);
  void close(std::int64_t handle);
  void close_all();

 private:
  std::int64_t next_handle();
  void save_counter();

  std::string state_file_;
  std::int64_t counter_ = 1000;
  std::map<std::int64_t, std::FILE*> files_;
};

}  // namespace kiln::ga
